"""reviews.promptfoo.promptfoo_command: the gate judges GATE_CONCURRENCY cases at once."""

from pathlib import Path

from reviews.promptfoo import promptfoo_command


def test_it_passes_gate_concurrency_to_promptfoo(settings):
    settings.GATE_CONCURRENCY = 6
    command = promptfoo_command(Path("c.yaml"), Path("r.json"))
    assert command[command.index("-j") + 1] == "6"


def test_it_keeps_repeats(settings):
    settings.GATE_CONCURRENCY = 3
    command = promptfoo_command(Path("c.yaml"), Path("r.json"), repeat=2)
    assert command[-4:] == ["-j", "3", "--repeat", "2"]
