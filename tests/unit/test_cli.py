import socket

import pytest
from mlflow import MlflowClient
from typer.testing import CliRunner

from paperops.cli import app
from settings import tracking_uri

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


def test_an_exception_message_reaches_the_user_verbatim_brackets_and_all(monkeypatch):
    import flows.pipeline
    from tasks.validate import DataValidationError, FailedExpectation

    details = ("[train] expected every class to hold between 5 % and 15 % of the split; 1 of 10 rows unexpected: "
               "[share=0, label=7] [n_lines=7, split=eval_shakespeare] :warning: [bold]not markup[/bold] " + "x" * 120)
    failure = DataValidationError("data/mnist5k", "image_classification",
                                  [FailedExpectation("expect_column_values_to_be_between", "share", details)])

    def failing_pipeline(paper, profile, overrides):
        raise failure

    monkeypatch.setattr(flows.pipeline, "paper_pipeline", failing_pipeline)
    result = runner.invoke(app, ["run", "ppt"])
    assert result.exit_code == 3
    assert f"  - expect_column_values_to_be_between (share): {details}\n" in result.output  # one line, as raised


def test_data_with_an_unknown_stage_exits_4_with_the_known_ones():
    result = runner.invoke(app, ["data", "nosuchstage"])
    assert result.exit_code == 4 and isinstance(result.exception, SystemExit)
    assert "unknown stage 'nosuchstage'" in result.output and "known: dejavu_letters, digits" in result.output


@pytest.mark.parametrize("command, says", [
    (["serve", "ppt", "--port", "99999"], "--port"),
    (["serve", "ppt", "--port", "0"], "--port"),
    (["serve", "ppt", "--workers", "0"], "--workers"),
    (["serve", "ppt", "--max-request-bytes", "0"], "--max-request-bytes"),
    (["serve", "ppt", "--port", "http"], "--port"),
    (["serve", "ppt", "--host", "no-such-host.invalid"], "--host 'no-such-host.invalid' does not resolve"),
    (["serve-llm", "cbq", "--port", "70000"], "--port"),
    (["worker", "--limit", "0"], "--limit"),
])
def test_a_bad_option_value_exits_2_naming_the_option(command, says):
    result = runner.invoke(app, command)
    assert result.exit_code == 2 and says in result.output, result.output
    assert isinstance(result.exception, SystemExit)


def test_serve_on_a_port_in_use_exits_2_before_loading_anything():
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = runner.invoke(app, ["serve", "ppt", "--port", str(port)])
    assert result.exit_code == 2 and f"cannot listen on 127.0.0.1:{port}: Address already in use" in result.output


@pytest.mark.parametrize("paper, override, says", [
    ("ppt", "compress.r=100000", "compress.r=100000 exceeds 32, the most tokens block 3 can remove"),
    ("ppt", "compress.blocks=[3,20]", "compress.blocks [20] do not exist in a model with 12 blocks"),
    ("w2s", "compress.r=9", "compress.r=9 exceeds 8, the most tokens block 1 can remove"),
    ("cbq", "compress.rank=257", "compress.rank=257 exceeds 256, min(in, out) of the model's smallest decoder"),
    ("cbq", "compress.window=5", "compress.window=5 exceeds the model's 4 decoder layers"),
    ("ppt", "data.expect.height=tall", "data.expect does not fit suite 'image_classification': height: Input"),
])
def test_a_knob_the_model_cannot_take_exits_2_before_anything_is_registered(paper, override, says):
    client = MlflowClient(tracking_uri(), registry_uri=tracking_uri())
    versions = len(client.search_model_versions(f"name='paperops-{paper}'"))
    result = runner.invoke(app, ["run", paper, "--set", override])
    assert result.exit_code == 2 and says in result.output, result.output
    assert len(client.search_model_versions(f"name='paperops-{paper}'")) == versions


def test_run_all_runs_every_paper_then_exits_6_when_a_gate_rejected(monkeypatch):
    from recipes import available_recipes

    ran, rejecting = [], {"cbq"}

    def pipeline(paper, profile, overrides):  # the CLI's side of a pipeline run: its summary
        ran.append(paper)
        rejected = paper in rejecting
        decision = {"alias": "champion", "version": "2", "promoted": not rejected, "previous_version": "1",
                    "reasons": ["size_ratio is 0.900; the gate requires <= 0.600"] if rejected else []}
        return {"paper": paper, "profile": profile, "pipeline_run_id": "r", "steps": {"promote": "Completed"},
                "variants": [], "versions": {}, "promotion": decision}

    monkeypatch.setattr("paperops.cli._run_pipeline", pipeline)
    result = runner.invoke(app, ["run", "all"])
    assert ran == list(available_recipes())  # every paper ran, the rejected one included
    assert result.exit_code == 6
    assert "  - size_ratio is 0.900; the gate requires <= 0.600" in result.output
    assert "the promotion gate rejected the candidate of cbq" in result.output
    rejecting.clear()
    assert runner.invoke(app, ["run", "all"]).exit_code == 0


@pytest.mark.filterwarnings("ignore:Logger 'prefect.flow_runs' attempted to send logs")  # no flow run here
def test_the_console_drops_prefect_tracebacks_of_handled_errors_only(capsys):
    import logging

    from prefect.logging.handlers import PrefectConsoleHandler

    from paperops.cli import hide_handled_failures
    from tasks.validate import DataValidationError

    root = logging.getLogger()
    handler = PrefectConsoleHandler()  # writes to the stderr of the moment: capsys's
    root.addHandler(handler)
    try:
        hide_handled_failures(DataValidationError)
        logger = logging.getLogger("prefect.flow_runs")
        for error in (DataValidationError("data/x", "suite", []), RuntimeError("a real crash")):
            try:
                raise error
            except Exception as exc:
                logger.error("Encountered exception during execution: %r", exc, exc_info=True)
                logger.error(f"Finished in state Failed('Flow run encountered an exception: {type(exc).__name__}: "
                             f"{exc}')")
    finally:
        root.removeHandler(handler)
    printed = capsys.readouterr().err
    assert "DataValidationError" not in printed
    assert "RuntimeError('a real crash')" in printed and "Traceback" in printed
    assert "Finished in state Failed('Flow run encountered an exception: RuntimeError: a real crash')" in printed
