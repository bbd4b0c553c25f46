"""The offline stand-in model: a deterministic OpenAI-compatible HTTP server.

It is not a language model. Each request carries the whole conversation; the
stand-in turns it into a `Conversation`, `choose_role()` picks the role whose
rules apply (the analyst agent, ...), and the role answers with a `Reply`: either
tool calls or text. `wire` renders that reply as a Responses or Chat Completions
object (or their SSE streams).

    python -m loopsite.standin --host 127.0.0.1 --port 8765 [--delay SECONDS]

Modules:
    conversation  requests -> Conversation; Reply and ToolCall
    wire          Reply -> response JSON / SSE events, token estimates
    dispatch      choose_role(): which role answers a conversation
    analyst       the diligence analyst (shell tool calls, artifacts, answer)
    evidence      reading dataroom files into facts, figures and tables
    findings      the analyst's topic rules (metric conflicts, rollups, ...)
    artifacts     the six output artifacts and the shell command that writes them
    rules         harness rules: trigger phrases and the sentence to add
    insight_writer  the seed's LLM insights over traces (marker "Loopsite task: llm-insights")
    eval_generator  eval definitions from approved feedback (marker "Loopsite task: eval-generation")
    judge         the rubric judge promptfoo's llm-rubric calls: always {pass, score, reason}
    textrules     the literal-phrase rules those three share
    faults        --fault broken-json | broken-json-once | unknown-trace, for tests
    generic       the fallback role for requests no other role claims
    server        the HTTP server

Nothing here imports Django or reads secrets.
"""
