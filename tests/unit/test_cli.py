from typer.testing import CliRunner

from paperops.cli import app

runner = CliRunner()


def test_list_shows_ppt_with_its_profiles():
    result = runner.invoke(app, ["list"])
    assert result.exit_code == 0, result.output
    assert "ppt" in result.output and "tiny, full" in result.output


def test_run_with_a_bad_override_exits_2_naming_the_key_before_any_work():
    result = runner.invoke(app, ["run", "ppt", "--set", "train.epochz=3"])
    assert result.exit_code == 2
    assert "train.epochz" in result.output


def test_run_unknown_paper_exits_2():
    result = runner.invoke(app, ["run", "nope"])
    assert result.exit_code == 2
    assert "unknown paper 'nope'" in result.output
