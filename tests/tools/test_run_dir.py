"""RunDir names every file a run writes; starting a run again (--resume none --overwrite) clears exactly those."""

from peapod_scale.tools.run_dir import RunDir
from peapod_scale.training.checkpoint import clear_run


def test_a_fresh_start_clears_what_training_wrote_and_keeps_the_rest(tmp_path):
    paths = RunDir(tmp_path)
    for folder in (paths.checkpoints / "step3", paths.model, paths.tensorboard):
        folder.mkdir(parents=True)
        (folder / "file").write_text("x")
    for path in (paths.config, paths.best, paths.train_log, paths.metrics("test"), paths.metrics("valid")):
        path.write_text("{}")
    (tmp_path / "notes.txt").write_text("the user's own file")
    (tmp_path / "slurm-123.out").write_text("the job's log")
    clear_run(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt", "slurm-123.out"]


def test_every_path_lies_in_the_run_folder_under_its_documented_name(tmp_path):
    paths = RunDir(tmp_path / "run")
    named = [paths.checkpoints, paths.model, paths.tensorboard, paths.config, paths.train_log, paths.best,
             paths.preempted, paths.metrics("test"), paths.traceback(3)]
    assert [p.relative_to(tmp_path / "run").as_posix() for p in named] == [
        "checkpoints", "model", "tensorboard", "config.json", "train.log", "best.json", "preempted.json",
        "metrics_test.json", "traceback-rank3.txt"]
