from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path
from django.views.generic import RedirectView

from loopsite.views import favicon

urlpatterns = [
    path("", RedirectView.as_view(pattern_name="reviews:inbox", permanent=False), name="home"),
    path("accounts/login/", auth_views.LoginView.as_view(), name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("favicon.ico", favicon, name="favicon"),
    path("admin/", admin.site.urls),
    path("", include("runs.urls")),
    path("", include("reviews.urls")),
]

# A request Django cannot read (too many fields, too large) gets a message, not a bare "Bad Request (400)".
handler400 = "loopsite.views.bad_request"
handler403 = "loopsite.views.permission_denied"
handler404 = "loopsite.views.page_not_found"
handler500 = "loopsite.views.server_error"
