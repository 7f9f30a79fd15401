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


def test_the_variants_table_shows_the_declared_columns_then_the_common_ones_that_a_variant_filled():
    from paperops.cli import variants_table

    rows = [{"variant": "dense", "role": "parent", "top1": 91.25, "macs_per_image": 2.5e6, "latency_p50_ms": 3.0},
            {"variant": "ppt", "role": "method", "top1": 90.5, "macs_per_image": 1.7e6, "macs_ratio": 0.68,
             "delta_vs_parent": -0.75, "latency_p50_ms": 2.0}]
    table = variants_table({"paper": "ppt", "variants": rows})
    assert [c.header for c in table.columns] == ["variant", "role", "top-1 %", "MMACs/img", "MACs ×", "Δ vs parent",
                                                 "p50 ms"]
    assert list(table.columns[3].cells) == ["2.5", "1.7"]  # declared scale: millions of MACs
    assert list(table.columns[4].cells) == ["", "0.68"]
