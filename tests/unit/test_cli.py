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


def test_run_all_refuses_overrides_that_belong_to_one_paper():
    result = runner.invoke(app, ["run", "all", "--set", "train.epochs=1"])
    assert result.exit_code == 2 and "one paper" in result.output


def test_headline_row_compares_the_method_with_its_baseline_in_the_metric_direction():
    from paperops.cli import headline_row

    variants = [{"variant": "ppt", "top1": 91.5}, {"variant": "tome_equal_budget", "top1": 90.25}]
    row = headline_row({"paper": "ppt", "variants": variants})
    assert row["ours"] == "91.5 (ppt)" and row["baseline"] == "90.25 (tome_equal_budget)"
    assert row["verdict"] == "beats tome_equal_budget" and row["paper figure"].startswith("79.8: DeiT-S")
    # perplexity: lower is better, so the higher one loses
    ppl = [{"variant": "cbq_W4A16", "ppl_shakespeare": 116.0}, {"variant": "gptq_W4A16", "ppl_shakespeare": 115.0}]
    assert headline_row({"paper": "cbq", "variants": ppl})["verdict"] == "does not beat gptq_W4A16"
    # a declared headline whose variants the run did not evaluate says so
    assert headline_row({"paper": "cbq", "variants": ppl[:1]})["verdict"] == "not measured in this run"
