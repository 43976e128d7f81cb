"""pipeline/run_log.py: append-only segments, one ordered stream, resumes that hide a lost attempt's rows."""

import json
import os

from pipeline.run_log import RunLog, load_rows, main


def _row(step, loss, n_keys=3):
    return {"step": step, "epoch": 0, "loss": loss, "lr": 1e-4, "keys": [f"k{step}_{i}" for i in range(n_keys)]}


def _segment_files(run):
    d = os.path.join(run, "metrics")
    return {n: open(os.path.join(d, n), "rb").read() for n in sorted(os.listdir(d))}


def _train(log, steps, loss_of, every):
    for s in steps:
        log.append(_row(s, loss_of(s)))
        if s % every == 0:
            log.flush()


def test_each_checkpoint_appends_only_its_rows(tmp_path):
    run = str(tmp_path / "run")
    log = RunLog(run, 0)
    sizes = []
    for s in range(1, 41):
        log.append(_row(s, 1.0 / s, n_keys=50))
        if s % 10 == 0:
            before = _segment_files(run) if s > 10 else {}
            log.flush()
            after = _segment_files(run)
            assert {k: v for k, v in after.items() if k in before} == before  # history is never rewritten
            (new,) = set(after) - set(before)
            sizes.append(len(after[new]))
            assert len(log.pending) == 0
    log.flush(plot=True)
    log.close()
    assert max(sizes) < 1.3 * min(sizes)  # bytes per checkpoint do not grow with the run
    rows = load_rows(run, 10**9)
    assert [r["step"] for r in rows] == list(range(1, 41)) and rows[6] == _row(7, 1 / 7, n_keys=50)
    assert [r["step"] for r in load_rows(run, 25)] == list(range(1, 26))
    assert set(load_rows(run, 5, keys=False)[0]) == {"step", "epoch", "loss", "lr"}  # keys not read
    assert os.path.exists(tmp_path / "run" / "loss_curve.png")


def test_resume_hides_rows_past_the_checkpoint_without_rewriting(tmp_path):
    run = str(tmp_path / "run")
    first = RunLog(run, 0)
    _train(first, range(1, 13), lambda s: 1.0, every=4)  # the lost attempt wrote 1-4, 5-8, 9-12
    first.close()
    written = _segment_files(run)
    second = RunLog(run, 4)  # but its latest checkpoint was step 4
    _train(second, range(5, 11), lambda s: 2.0, every=3)  # segments 5-6, 7-9 (another interval), 10
    second.flush()
    second.close()
    assert {k: v for k, v in _segment_files(run).items() if k in written} == written
    rows = load_rows(run, 10)
    assert [r["step"] for r in rows] == list(range(1, 11))
    assert [r["loss"] for r in rows] == [1.0] * 4 + [2.0] * 6
    third = RunLog(run, 10)
    _train(third, range(11, 14), lambda s: 3.0, every=13)
    third.flush()
    third.close()
    assert [(r["step"], r["loss"]) for r in load_rows(run, 100)][8:] == [(9, 2.0), (10, 2.0), (11, 3.0),
                                                                           (12, 3.0), (13, 3.0)]


def test_tensorboard_and_cli(tmp_path, capsys):
    run = str(tmp_path / "run")
    log = RunLog(run, 0)
    _train(log, range(1, 5), lambda s: 0.5, every=2)
    log.close()
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    ea = EventAccumulator(os.path.join(run, "tensorboard"))
    ea.Reload()
    assert [e.step for e in ea.Scalars("train/loss")] == [1, 2, 3, 4]
    main([run, "--upto", "3"])
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3] and "keys" not in lines[0]
    assert load_rows(str(tmp_path / "none"), 10) == []
