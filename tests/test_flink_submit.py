"""run_flink.sh and orderflow.flink_submit: resolution, validation and the network-free dry run.

The real pipelines go through the shell script exactly as an operator would run it, in a process with no
network (tests/support/no_network.py: the dry run must open no connection); the option resolution details are
also checked in-process on the small pipeline of tests/support/tiny_pipeline.py.
"""
from __future__ import annotations

import json
import os
import pathlib
import socket
import subprocess
import sys

import port_for
import pytest

from orderflow import flink_submit
from orderflow.flink_submit import SubmissionError, resolve
from orderflow.pipelines import PipelineEntry
from tests.support.environment import require
from tests.support.no_network import no_network_environment

REPO = pathlib.Path(__file__).resolve().parent.parent
RUN_FLINK = REPO / "run_flink.sh"
# The small pipeline of tests/support/tiny_pipeline.py, registered as a pipeline that has no --bounded run mode.
TINY = {"tiny": PipelineEntry("tests.support.tiny_pipeline", "TinyOptions", run_mode=False)}


def run_flink(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(RUN_FLINK), *args], capture_output=True, text=True, timeout=300,
        env={**os.environ, "ORDERFLOW_PYTHON": sys.executable, **(env or {})},
    )


def dry_run_tiny(capsys, *args: str) -> dict:
    code = flink_submit.main(["tiny", *args, "--dry-run"], pipelines=TINY)
    out = capsys.readouterr()
    assert code == 0, out.err
    return json.loads(out.out)


# -- the real pipelines, through the shell script --------------------------------------------------

@pytest.fixture(scope="module", params=["orders", "presence"])
def pipeline_dry_run(request, tmp_path_factory):
    name = request.param
    offline = no_network_environment(tmp_path_factory.mktemp("no-network"))
    result = run_flink(name, "--flink_master", f"orderflow-{name}-rest:8081", "--checkpointing_interval", "30000",
                       "--dry-run", env={**offline, "ORDERFLOW_TOPIC_PARTITIONS": "12"})
    assert result.stdout, result.stderr
    return name, result, json.loads(result.stdout)


def test_dry_run_of_each_pipeline_resolves_a_streaming_flink_submission(pipeline_dry_run):
    name, result, described = pipeline_dry_run
    options_class = {"orders": "OrdersOptions", "presence": "PresenceOptions"}[name]

    assert described["pipeline"] == name
    assert described["module"] == f"orderflow.pipelines.{name}"
    assert described["runner"] == "FlinkRunner" and described["streaming"] is True
    assert described["flink"] == {
        "flink_master": f"orderflow-{name}-rest:8081", "flink_version": "1.20", "flink_submit_uber_jar": True,
        "flink_job_server_jar": None, "parallelism": 12, "max_parallelism": 720,
        "checkpointing_interval": 30000, "checkpointing_mode": "EXACTLY_ONCE",
    }
    assert described["environment"]["environment_type"] == "EXTERNAL"
    assert described["environment"]["environment_config"] == "localhost:50000"
    assert described["setup_file"] == str(REPO / "setup.py")
    assert described["job_name"] == f"orderflow-{name}"
    assert described["pipeline_options_class"] == options_class
    assert described["pipeline_options"]["bounded"] is False
    # The whole streaming graph was translated for Flink, in an EXTERNAL SDK environment.
    assert described["graph"]["leaf_transforms"] > 5
    assert described["graph"]["environments"] == ["beam:env:external:v1"]
    assert described["network"] == "not contacted (dry run)"
    # The exit status says whether the graph is one Flink can run.
    if described["graph"]["problems"]:
        assert result.returncode == 2
        assert "does not translate to a portable graph Flink can run" in result.stderr
    else:
        assert result.returncode == 0, result.stderr


def test_dry_run_graph_of_each_pipeline_is_readable_by_flink(pipeline_dry_run):
    _, result, described = pipeline_dry_run
    assert described["graph"]["problems"] == []
    assert result.returncode == 0, result.stderr
    # What the streaming graph asks of Flink: the Kafka source is splittable and commits on finalization.
    assert {"beam:requirement:pardo:splittable_dofn:v1", "beam:requirement:pardo:finalization:v1"} <= set(
        described["graph"]["requirements"])


def test_script_reports_an_unknown_pipeline():
    result = run_flink("billing", "--flink_master", "jm:8081", "--dry-run")
    assert result.returncode == 2
    assert "unknown pipeline 'billing': choose one of orders, presence" in result.stderr
    assert result.stdout == ""


def test_script_reports_a_missing_master(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "FLINK_MASTER"}
    result = subprocess.run([str(RUN_FLINK), "orders", "--dry-run"], capture_output=True, text=True, timeout=120,
                            env={**env, "ORDERFLOW_PYTHON": sys.executable})
    assert result.returncode == 2
    assert "missing --flink_master" in result.stderr


def test_submission_to_an_unreachable_master_fails_clearly():
    closed_port = port_for.select_random()
    result = run_flink("presence", "--flink_master", f"127.0.0.1:{closed_port}")
    assert result.returncode == 1
    assert f"run_flink.sh: error: cannot reach the Flink JobManager REST API at 127.0.0.1:{closed_port}" in result.stderr
    assert "Traceback" not in result.stderr


def test_script_without_arguments_prints_usage_and_fails():
    result = subprocess.run([str(RUN_FLINK)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "run_flink.sh orders|presence --flink_master HOST:PORT" in result.stdout


# -- resolution and validation, in process on the small pipeline -------------------------------------

def test_defaults_resolve_to_the_production_submission(capsys, monkeypatch):
    monkeypatch.delenv("FLINK_MASTER", raising=False)
    monkeypatch.setenv("ORDERFLOW_TOPIC_PARTITIONS", "6")
    described = dry_run_tiny(capsys, "--flink_master", "jm.example:8081")

    assert described["beam_args"][:2] == ["--runner=FlinkRunner", "--streaming"]
    assert described["flink"]["parallelism"] == 6  # one source subtask per Kafka partition
    assert described["flink"]["flink_submit_uber_jar"] is True
    assert described["flink"]["checkpointing_interval"] == 60_000
    assert described["environment"] == {"environment_type": "EXTERNAL", "environment_config": "localhost:50000",
                                        "sdk_worker_parallelism": 1}
    assert described["pipeline_options_class"] == "TinyOptions"
    assert described["pipeline_options"] == {"tiny_window_seconds": 60, "tiny_min_count": 1}
    # Streaming translation keeps Create's no-op MaybeReshuffle; the check knows a pass-through is harmless.
    assert described["graph"]["leaf_urns"].get("beam:transform:pickled_python:v1") == 1
    assert described["graph"]["problems"] == []
    assert "beam:requirement:pardo:stateful:v1" in described["graph"]["requirements"]


def test_every_knob_and_pipeline_option_reaches_beam(capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("FLINK_MASTER", "https://flink.internal:443")
    job_server_jar = tmp_path / "beam-runners-flink-1.19-job-server.jar"
    job_server_jar.write_bytes(b"PK")  # only its existence is checked before submission
    described = dry_run_tiny(
        capsys, "--flink_version", "1.19", "--parallelism", "32", "--max_parallelism", "1440",
        "--checkpointing_interval", "15000", "--checkpointing_mode", "AT_LEAST_ONCE",
        "--environment_type", "docker", "--job_name", "tiny-canary", "--sdk_worker_parallelism=4",
        "--checkpoint_timeout_millis=600000", "--min_pause_between_checkpoints=5000",
        f"--flink_job_server_jar={job_server_jar}",
        "--tiny_window_seconds=120",
    )
    assert described["flink"] == {
        "flink_master": "https://flink.internal:443", "flink_version": "1.19", "flink_submit_uber_jar": True,
        "flink_job_server_jar": str(job_server_jar),
        "parallelism": 32, "max_parallelism": 1440,
        "checkpointing_interval": 15000, "checkpointing_mode": "AT_LEAST_ONCE",
    }
    assert described["environment"]["environment_type"] == "DOCKER"
    assert described["environment"]["environment_config"] == flink_submit.BEAM_SDK_IMAGE
    assert described["environment"]["sdk_worker_parallelism"] == "4"
    assert described["job_name"] == "tiny-canary"
    assert described["options"]["checkpoint_timeout_millis"] == 600000
    assert described["options"]["min_pause_between_checkpoints"] == 5000
    assert described["pipeline_options"]["tiny_window_seconds"] == 120
    assert described["graph"]["environments"] == ["beam:env:docker:v1"]


def test_process_environment_and_local_job_server(capsys):
    described = dry_run_tiny(capsys, "--flink_master", "jm:8081", "--environment_type", "PROCESS", "--no_uber_jar")
    assert json.loads(described["environment"]["environment_config"]) == {"command": "/opt/apache/beam/boot"}
    assert described["flink"]["flink_submit_uber_jar"] is False
    assert described["graph"]["environments"] == ["beam:env:process:v1"]


def test_building_the_application_jar_needs_no_master(capsys, monkeypatch, tmp_path):
    monkeypatch.delenv("FLINK_MASTER", raising=False)
    described = dry_run_tiny(capsys, "--output_executable_path", str(tmp_path / "tiny.jar"))
    assert described["output_executable_path"] == str(tmp_path / "tiny.jar")
    assert described["flink"]["flink_master"] == "[auto]"
    assert described["flink"]["flink_submit_uber_jar"] is False  # the Java job server writes the jar
    assert described["environment"]["environment_config"] == "localhost:50000"


@pytest.mark.parametrize("args, message", [
    (["--environment_type", "LOOPBACK"], "LOOPBACK runs user code in the submitting process"),
    (["--environment_type", "PROCESS", "--environment_config", "{}"], "must be JSON with a 'command'"),
    (["--flink_version", "1.12"], "--flink_version 1.12 is not one Beam publishes"),
    (["--parallelism", "0"], "--parallelism must be at least 1"),
    (["--parallelism", "64", "--max_parallelism", "32"], "--max_parallelism 32 is below --parallelism 64"),
    (["--checkpointing_interval", "0"], "--checkpointing_interval must be positive"),
    (["--bounded"], "--bounded contradicts a streaming Flink submission"),
    (["--runner=DirectRunner"], "--runner is fixed to FlinkRunner"),
    (["--tiny_windw_seconds=5"], "unknown options (not a Beam, Flink or pipeline option): --tiny_windw_seconds=5"),
    (["--tiny_window_seconds=soon"], "invalid option: argument --tiny_window_seconds: invalid int value: 'soon'"),
    (["--num_concurrent_checkpoints=many"], "invalid option: argument --num_concurrent_checkpoints"),
    (["--setup_file", "/nonexistent/setup.py"], "--setup_file /nonexistent/setup.py: no such setup.py"),
    (["--flink_job_server_jar=/nonexistent/job-server.jar"], "--flink_job_server_jar /nonexistent/job-server.jar: no such file"),
])
def test_invalid_submissions_are_refused_with_the_reason(args, message):
    with pytest.raises(SubmissionError) as raised:
        resolve(["tiny", "--flink_master", "jm:8081", *args], TINY)
    assert message in str(raised.value)


def test_cli_prints_the_reason_and_exits_2(capsys):
    code = flink_submit.main(["tiny", "--flink_master", "jm:8081", "--tiny_min_count=x", "--dry-run"],
                             pipelines=TINY)
    assert code == 2
    assert "run_flink.sh: error: invalid option: argument --tiny_min_count" in capsys.readouterr().err


def test_a_pipeline_module_that_does_not_import_is_named():
    with pytest.raises(SubmissionError, match=r"pipeline 'ghost': cannot import orderflow\.pipelines\.ghost"):
        resolve(["ghost", "--flink_master", "jm:8081"],
                {"ghost": PipelineEntry("orderflow.pipelines.ghost", "GhostOptions")})


def test_a_registry_entry_naming_options_its_module_lacks_is_refused():
    misnamed = {"tiny": PipelineEntry("tests.support.tiny_pipeline", "TinyPipelineOptions", run_mode=False)}
    with pytest.raises(SubmissionError, match=r"pipeline 'tiny': tests\.support\.tiny_pipeline defines no "
                                              r"PipelineOptions subclass TinyPipelineOptions"):
        resolve(["tiny", "--flink_master", "jm:8081"], misnamed)


# -- no network during a dry run -------------------------------------------------------------------

def test_the_no_network_environment_refuses_connections_and_look_ups(tmp_path):
    """The dry runs above prove nothing unless their environment would refuse a connection."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        port = server.getsockname()[1]
        for attempt in (f"socket.create_connection(('127.0.0.1', {port}), timeout=2)",
                        f"socket.getaddrinfo('localhost', {port})"):
            done = subprocess.run([sys.executable, "-c", f"import socket; {attempt}"], capture_output=True,
                                  text=True, timeout=60, env=no_network_environment(tmp_path))
            assert done.returncode != 0 and "NetworkForbidden: tried to reach the network" in done.stderr, attempt
        # The same interpreter without it connects: the refusal is the environment's.
        done = subprocess.run([sys.executable, "-c", f"import socket; socket.create_connection(('127.0.0.1', {port}))"],
                              capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr


def test_dry_run_fails_if_building_the_pipeline_touches_the_network(tmp_path):
    phones_home = (
        "import socket, sys\n"
        "from orderflow import flink_submit\n"
        "from orderflow.pipelines import PipelineEntry\n"
        "from tests.support import tiny_pipeline\n"
        "tiny_pipeline.build = lambda pipeline, options: socket.getaddrinfo('orderflow-orders-rest', 8081)\n"
        "sys.exit(flink_submit.main(['tiny', '--flink_master', 'jm:8081', '--dry-run'],\n"
        "                           pipelines={'tiny': PipelineEntry('tests.support.tiny_pipeline', 'TinyOptions',\n"
        "                                                            run_mode=False)}))\n")
    done = subprocess.run([sys.executable, "-c", phones_home], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env=no_network_environment(tmp_path))
    assert done.returncode != 0 and "NetworkForbidden" in done.stderr and "socket.getaddrinfo" in done.stderr


# -- deploy/ agrees with the launcher and the installed SDK ------------------------------------------

def _load_yaml(name: str) -> list[dict]:
    import yaml

    return [doc for doc in yaml.safe_load_all((REPO / "deploy" / name).read_text()) if doc]


@pytest.mark.parametrize("name, input_topic", [("orders", "ordem-ativo"), ("presence", "restaurant-keepalive")])
def test_flink_deployment_matches_the_launcher(name, input_topic):
    (deployment,) = _load_yaml(f"flinkdeployment-{name}.yaml")
    spec = deployment["spec"]
    conf = spec["flinkConfiguration"]

    assert deployment["kind"] == "FlinkDeployment"
    assert spec["flinkVersion"] == "v" + flink_submit.DEFAULT_FLINK_VERSION.replace(".", "_")
    assert spec["job"]["jarURI"] == f"local:///opt/flink/usrlib/orderflow-{name}.jar"
    assert spec["job"]["entryClass"] == "org.apache.beam.runners.flink.FlinkPipelineRunner"
    assert spec["job"]["upgradeMode"] == "savepoint"
    assert int(conf["pipeline.max-parallelism"]) == flink_submit.DEFAULT_MAX_PARALLELISM
    assert conf["execution.checkpointing.interval"] == f"{flink_submit.DEFAULT_CHECKPOINTING_INTERVAL_MS // 1000}s"
    assert conf["execution.checkpointing.mode"] == "EXACTLY_ONCE"

    # The SDK worker pool sidecar listens where the launcher's EXTERNAL environment points.
    (sidecar,) = [c for c in spec["taskManager"]["podTemplate"]["spec"]["containers"] if c["name"] == "beam-worker-pool"]
    assert sidecar["args"] == ["--worker_pool"]
    host, port = flink_submit.DEFAULT_ENVIRONMENT_CONFIG["EXTERNAL"].split(":")
    assert host == "localhost" and [p["containerPort"] for p in sidecar["ports"]] == [int(port)]
    # One GIL-bound SDK worker process, hence one core, per slot.
    assert int(sidecar["resources"]["requests"]["cpu"]) == int(conf["taskmanager.numberOfTaskSlots"])

    # Parallelism: never above the input topic's partitions, which divide the key groups evenly.
    partitions = {t["metadata"]["name"]: t["spec"]["partitions"] for t in _load_yaml("kafka-topics.yaml")}
    ceiling = int(conf["job.autoscaler.vertex.max-parallelism"])
    assert ceiling == partitions[input_topic]
    assert flink_submit.DEFAULT_MAX_PARALLELISM % partitions[input_topic] == 0
    assert int(conf["job.autoscaler.vertex.min-parallelism"]) <= spec["job"]["parallelism"] <= ceiling
    assert partitions[input_topic] % spec["job"]["parallelism"] == 0


def test_images_match_the_installed_sdk_and_flink_version():
    import apache_beam

    worker = (REPO / "deploy" / "Dockerfile.beam-worker").read_text()
    python = f"{sys.version_info.major}.{sys.version_info.minor}"
    assert f"FROM apache/beam_python{python}_sdk:{apache_beam.__version__}\n" in worker
    assert flink_submit.BEAM_SDK_IMAGE == f"apache/beam_python{python}_sdk:{apache_beam.__version__}"
    flink = (REPO / "deploy" / "Dockerfile.flink").read_text()
    assert f"ARG FLINK_IMAGE=flink:{flink_submit.DEFAULT_FLINK_VERSION}-java17\n" in flink


KUSTOMIZE = REPO / ".local" / "bin" / "kustomize"  # `make kustomize` (part of make setup)


@pytest.mark.needs_stack  # kustomize, from make setup
def test_kustomization_renders_every_manifest():
    import yaml

    require(KUSTOMIZE.is_file(), f"no kustomize binary at {KUSTOMIZE} (make kustomize)")
    rendered = subprocess.run([str(KUSTOMIZE), "build", str(REPO / "deploy")], capture_output=True, text=True,
                              timeout=60)
    assert rendered.returncode == 0, rendered.stderr
    documents = list(yaml.safe_load_all(rendered.stdout))
    kinds = sorted((doc["kind"], doc["metadata"]["name"]) for doc in documents)
    assert kinds == sorted([
        ("ConfigMap", "orderflow-endpoints"),
        ("FlinkDeployment", "orderflow-orders"), ("FlinkDeployment", "orderflow-presence"),
        *[("KafkaTopic", t) for t in ("ordem-ativo", "ordem-ativo-precificado", "ordem-ativo-dlq",
                                      "restaurant-keepalive", "restaurant-availability")],
    ])
    namespaces = {(doc["kind"], doc["metadata"]["namespace"]) for doc in documents}
    assert namespaces == {("ConfigMap", "orderflow"), ("FlinkDeployment", "orderflow"), ("KafkaTopic", "kafka")}


def test_topics_are_the_ones_the_pipelines_use():
    import dataclasses

    from orderflow.config import Topics

    declared = {t["metadata"]["name"] for t in _load_yaml("kafka-topics.yaml")}
    assert declared == {getattr(Topics(), f.name) for f in dataclasses.fields(Topics)}


def test_restore_and_tuning_options_reach_the_job_server_through_the_script(tmp_path):
    """What an operator types to restore a savepoint and tune checkpoints and bundles, through run_flink.sh:
    each option is in the Beam command line the Flink job server receives, typed."""
    savepoint = "s3://flink/savepoints/savepoint-1a2b3c"
    result = run_flink("orders", "--flink_master", "jm:8081", f"--savepoint_path={savepoint}",
                       "--allow_non_restored_state", "--num_concurrent_checkpoints=2",
                       "--tolerable_checkpoint_failure_number=3", "--max_bundle_size=500",
                       "--max_bundle_time_mills=250", "--auto_watermark_interval=200", "--no_uber_jar",
                       "--orders_batch_size=2000", "--dry-run")
    assert result.returncode == 0, result.stderr
    described = json.loads(result.stdout)
    assert {key: described["options"].get(key) for key in (
        "savepoint_path", "allow_non_restored_state", "num_concurrent_checkpoints",
        "tolerable_checkpoint_failure_number", "max_bundle_size", "max_bundle_time_mills",
        "auto_watermark_interval")} == {
        "savepoint_path": savepoint, "allow_non_restored_state": True, "num_concurrent_checkpoints": 2,
        "tolerable_checkpoint_failure_number": 3, "max_bundle_size": 500, "max_bundle_time_mills": 250,
        "auto_watermark_interval": 200}
    assert f"--savepoint_path={savepoint}" in described["beam_args"]
    assert "--allow_non_restored_state" in described["beam_args"]
    assert described["flink"]["flink_submit_uber_jar"] is False
    assert described["pipeline_options"]["orders_batch_size"] == 2000
