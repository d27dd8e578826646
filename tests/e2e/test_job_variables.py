"""Job variables cannot switch on operator policy: the work-pool templates refuse FINESHIP_* (and any other
environment a run could use to change who it is or what it trusts) and offer no command override."""

from __future__ import annotations

import json

import pytest

from tests.support.tiny import REPO

pytestmark = pytest.mark.e2e

POOLS = {"process": "process.json", "ecs": "ecs.json", "kubernetes": "kubernetes.json"}


def _deployment(client, pool: str, template: dict) -> object:
    from prefect.client.schemas.actions import WorkPoolCreate

    client.create_work_pool(WorkPoolCreate(name=pool, type="process", base_job_template=template), overwrite=True)
    flow_id = client.create_flow_from_name("retrain")
    # What the operator sets per deployment (prefect.yaml) for the variables the template requires.
    required = {k: "arn:aws:iam::123456789012:role/x" if k.endswith("_arn") else "registry.example/fineship:1"
                for k in template["variables"].get("required", [])}
    return client.create_deployment(flow_id=flow_id, name=f"retrain-{pool}", work_pool_name=pool,
                                    entrypoint="flows/retrain.py:retrain_flow", job_variables=required)


@pytest.mark.parametrize("kind", sorted(POOLS))
def test_a_run_cannot_set_policy_through_job_variables(prefect_harness, kind):
    from prefect import get_client
    from prefect.exceptions import PrefectHTTPStatusError

    template = json.loads((REPO / "infra" / "prefect" / POOLS[kind]).read_text())
    assert "command" not in template["variables"]["properties"]
    assert "{{ command }}" not in json.dumps(template["job_configuration"])
    with get_client(sync_client=True) as client:
        deployment_id = _deployment(client, f"jv-{kind}", template)
        for env in ({"FINESHIP_AUTO_PROMOTE": "true"}, {"FINESHIP_TRUSTED_REVIEWERS": "/tmp/mine"},
                    {"FINESHIP_HOME": "/tmp/other-home"}, {"PREFECT_API_URL": "http://127.0.0.1:1"},
                    {"MLFLOW_TRACKING_URI": "file:///tmp/x"}, {"AWS_ROLE_ARN": "arn:aws:iam::1:role/x"},
                    {"LD_PRELOAD": "/tmp/x.so"}, {"PATH": "/tmp"}):
            with pytest.raises(PrefectHTTPStatusError) as err:
                client.create_flow_run_from_deployment(deployment_id, job_variables={"env": env})
            assert err.value.response.status_code in (409, 422), env
        # Positive control: the harmless variables a run may tune are accepted.
        run = client.create_flow_run_from_deployment(deployment_id, job_variables={"env": {"OMP_NUM_THREADS": "2",
                                                                                           "TZ": "UTC"}})
        assert run.job_variables["env"] == {"OMP_NUM_THREADS": "2", "TZ": "UTC"}


def test_the_process_worker_ignores_a_command_override(prefect_harness):
    import asyncio

    from prefect.workers.process import ProcessJobConfiguration

    template = json.loads((REPO / "infra" / "prefect" / "process.json").read_text())
    config = asyncio.run(ProcessJobConfiguration.from_template_and_values(
        template, {"command": "env FINESHIP_AUTO_PROMOTE=true python -m prefect.engine", "env": {"TZ": "UTC"}}))
    assert config.command is None  # the worker fills in its own flow-run command
    assert "FINESHIP_AUTO_PROMOTE" not in json.dumps(config.env)
