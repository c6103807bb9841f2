"""Progress is printed as whole lines, so a saved notebook or a log shows where a wait stood."""

import io

from vadr1_lib.progress import TextProgress, track


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_lines_at_start_every_interval_and_end_never_a_bar():
    out, clock = io.StringIO(), FakeClock()
    with TextProgress(10, "infer test.jsonl", "video", every=10, stream=out, clock=clock) as progress:
        for _ in range(10):
            clock.now += 3
            progress.update()
    lines = out.getvalue().splitlines()
    assert lines[0] == "infer test.jsonl: 0/10 videos ..."
    assert lines[1] == "infer test.jsonl: 4/10 videos (40%), 12 s, about 18 s left"  # first update 10 s after the start
    assert lines[-1] == "infer test.jsonl: 10/10 videos in 30 s"
    assert len(lines) == 4 and "\r" not in out.getvalue() and "%|" not in out.getvalue()


def test_a_resumed_count_a_disabled_one_and_an_empty_one():
    out, clock = io.StringIO(), FakeClock()
    progress = TextProgress(5, "sft", "step", start_at=3, stream=out, clock=clock)
    clock.now = 4
    progress.update(2, note="loss 0.5")
    progress.close(note="loss 0.4")
    progress.close()
    assert out.getvalue().splitlines() == ["sft: 3/5 steps (resumed) ...", "sft: 5/5 steps in 4 s; loss 0.4"]
    quiet = io.StringIO()
    TextProgress(5, "x", stream=quiet, enabled=False).close()
    TextProgress(0, "x", stream=quiet).close()
    assert quiet.getvalue() == ""


def test_track_yields_every_item(capsys):
    assert list(track(["a", "b"], "annotate", "clip")) == ["a", "b"]
    assert capsys.readouterr().out.splitlines()[-1].startswith("annotate: 2/2 clips in")
