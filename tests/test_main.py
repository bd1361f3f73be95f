from circuit.__main__ import main


def test_main_prints_the_study_summary_on_the_bundled_model(capsys):
    assert main(["--variant", "study"]) == 0
    out = capsys.readouterr().out
    assert "logit diff > 2 and swapped < -2" in out
    assert "clean logit diff (mean)" in out
    assert "descriptor=" in out


def test_main_reports_a_bad_model_in_one_line(capsys):
    assert main(["--model", "random:gpt2"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown random shape 'gpt2'")
    assert err.count("\n") == 1


def test_main_reports_an_emptied_dataset(capsys):
    assert main(["--model", "random:bundled", "--variant", "study"]) == 2
    assert "kept 0/" in capsys.readouterr().err
