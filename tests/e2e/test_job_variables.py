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


# --------------------------------------------------------------------------------------------
# What code runs and with which identity is the operator's: a run cannot change the image, roles,
# credentials, cluster, namespace or service account (issue #13, audit G2).
# --------------------------------------------------------------------------------------------

HOSTILE = {
    "ecs": [{"image": "attacker.example/fineship:evil"}, {"task_definition_arn": "arn:aws:ecs:us-east-1:1:task-definition/x:1"},
            {"task_role_arn": "arn:aws:iam::1:role/admin"}, {"execution_role_arn": "arn:aws:iam::1:role/admin"},
            {"aws_credentials": {"aws_access_key_id": "AKIA", "aws_secret_access_key": "x"}},
            {"cluster": "other"}, {"family": "someone-elses-family"}, {"launch_type": "EC2"},
            {"vpc_id": "vpc-1"}, {"network_configuration": {"awsvpcConfiguration": {"assignPublicIp": "ENABLED"}}},
            {"cloudwatch_logs_options": {"awslogs-endpoint": "https://attacker.example"}},
            {"configure_cloudwatch_logs": False}, {"container_name": "sidecar"}],
    "kubernetes": [{"image": "attacker.example/fineship:evil"}, {"namespace": "kube-system"},
                   {"service_account_name": "cluster-admin"},
                   {"cluster_config": {"config": {}, "context_name": "other"}}],
    "process": [{"working_dir": "/tmp/elsewhere"}],
}
# Common to every pool: a dotted key (Prefect's workers expand `env.X` into `env: {X: ...}`) and template
# placeholders in a run's strings (the worker resolves `{{ prefect.blocks... }}` after filling in the variables).
SMUGGLED = [{"env.FINESHIP_AUTO_PROMOTE": "true"}, {"command": "python evil.py"},
            {"env": {"TZ": "{{ prefect.blocks.secret.pipeline-key }}"}},
            {"name": "{{ prefect.variables.anything }}"}]
# What a run may legitimately tune, and where the worker must see it.
TUNING = {"ecs": ({"cpu": 4096, "memory": 16384}, lambda job: (job["task_definition"]["cpu"],
                                                               job["task_definition"]["memory"]), (4096, 16384)),
          "kubernetes": ({"cpu_request": "500m", "memory_limit": "2Gi"},
                         lambda job: job["job_manifest"]["spec"]["template"]["spec"]["containers"][0]["resources"],
                         {"requests": {"cpu": "500m", "memory": "8Gi"}, "limits": {"memory": "2Gi"}}),
          "process": ({"env": {"OMP_NUM_THREADS": "1"}}, lambda job: job["env"]["OMP_NUM_THREADS"], "1")}


def _rendered(template: dict, values: dict) -> dict:
    """The job configuration a worker builds from the pool template and a run's job variables: Prefect's own
    merge and templating (`BaseJobConfiguration.from_template_and_values`, as in `resolve_for_flow_run`), kept
    whole because the ECS/Kubernetes configuration classes live in worker packages fineship does not install."""
    import asyncio

    from prefect import get_client
    from prefect.workers.base import BaseJobConfiguration
    from pydantic import ConfigDict

    class Whole(BaseJobConfiguration):
        model_config = ConfigDict(extra="allow")

    async def render() -> dict:
        async with get_client() as client:
            config = await Whole.from_template_and_values(template, values, client=client)
        return config.model_dump()

    return asyncio.run(render())


def _operator_owned(kind: str, job: dict) -> dict:
    if kind == "ecs":
        task, request = job["task_definition"], job["task_run_request"]
        return {"image": task["containerDefinitions"], "family": task["family"], "exec": task["executionRoleArn"],
                "task_role": request["overrides"]["taskRoleArn"], "launch": request["launchType"],
                "cluster": (request["cluster"], job["cluster"]), "arn": request.get("taskDefinition"),
                "creds": job.get("aws_credentials"), "vpc": job["vpc_id"], "net": job["network_configuration"],
                "logs": (job["configure_cloudwatch_logs"], job.get("cloudwatch_logs_options"),
                         job["container_name"])}
    if kind == "kubernetes":
        pod = job["job_manifest"]["spec"]["template"]["spec"]
        return {"image": [c["image"] for c in pod["containers"]], "sa": pod["serviceAccountName"],
                "ns": (job["namespace"], job["job_manifest"]["metadata"]["namespace"]),
                "cluster": job.get("cluster_config")}
    return {"cwd": job["working_dir"], "command": job["command"]}


@pytest.mark.parametrize("kind", sorted(POOLS))
def test_a_run_cannot_choose_the_code_or_identity_it_runs_with(prefect_harness, kind):
    from prefect import get_client
    from prefect.exceptions import PrefectHTTPStatusError

    template = json.loads((REPO / "infra" / "prefect" / POOLS[kind]).read_text())
    assert not template["variables"].get("required"), "nothing a deployment must supply: the operator fixes it"
    with get_client(sync_client=True) as client:
        from prefect.client.schemas.actions import WorkPoolCreate

        pool = f"jv-owned-{kind}"
        # The real pool type: what `prefect work-pool create --type <kind> --base-job-template` stores.
        client.create_work_pool(WorkPoolCreate(name=pool, type=kind, base_job_template=template), overwrite=True)
        flow_id = client.create_flow_from_name("retrain")
        deployment_id = client.create_deployment(flow_id=flow_id, name=f"owned-{kind}", work_pool_name=pool,
                                                 entrypoint="flows/retrain.py:retrain_flow")
        # A deployment cannot bring its own image or role either (the documented prefect.yaml no longer tries).
        with pytest.raises(PrefectHTTPStatusError) as err:
            client.create_deployment(flow_id=flow_id, name=f"evil-{kind}", work_pool_name=pool,
                                     entrypoint="flows/retrain.py:retrain_flow", job_variables=HOSTILE[kind][0])
        assert err.value.response.status_code in (409, 422)
        for hostile in HOSTILE[kind] + SMUGGLED:
            with pytest.raises(PrefectHTTPStatusError) as err:
                client.create_flow_run_from_deployment(deployment_id, job_variables=hostile)
            assert err.value.response.status_code in (409, 422), hostile
        # Positive control: resources stay tunable per run, and reach the worker.
        tuning, where, expected = TUNING[kind]
        run = client.create_flow_run_from_deployment(deployment_id, job_variables=tuning)
        assert run.job_variables == tuning
    assert where(_rendered(template, run.job_variables)) == expected

    # Defence in depth: job variables that got past the server (say, a run created before the pool was
    # hardened) still leave every operator-owned field as the operator wrote it; only the dotted `env.` key
    # relies on the server's refusal (see the next test).
    owned = _operator_owned(kind, _rendered(template, {}))
    job = _rendered(template, {k: v for hostile in HOSTILE[kind] + SMUGGLED[1:2] for k, v in hostile.items()})
    assert _operator_owned(kind, job) == owned
    assert "evil" not in json.dumps(job) and "attacker" not in json.dumps(job)


def test_without_the_closed_schema_a_dotted_key_would_switch_on_policy(prefect_harness):
    """The attack the closed variables schema (`additionalProperties: false`) stops: Prefect's server checks
    `env`'s allow-list only under the key `env`, while the worker expands `env.FINESHIP_AUTO_PROMOTE`."""
    from prefect import get_client
    from prefect.client.schemas.actions import WorkPoolCreate

    template = json.loads((REPO / "infra" / "prefect" / "process.json").read_text())
    assert template["variables"]["additionalProperties"] is False
    open_template = json.loads(json.dumps(template))
    del open_template["variables"]["additionalProperties"]
    with get_client(sync_client=True) as client:
        client.create_work_pool(WorkPoolCreate(name="jv-open", type="process", base_job_template=open_template),
                                overwrite=True)
        flow_id = client.create_flow_from_name("retrain")
        deployment_id = client.create_deployment(flow_id=flow_id, name="open", work_pool_name="jv-open",
                                                 entrypoint="flows/retrain.py:retrain_flow")
        run = client.create_flow_run_from_deployment(deployment_id,
                                                     job_variables={"env.FINESHIP_AUTO_PROMOTE": "true"})
    assert _rendered(open_template, run.job_variables)["env"]["FINESHIP_AUTO_PROMOTE"] == "true"
