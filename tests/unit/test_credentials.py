"""No credential enters a spec or a job's environment; errors name where, never the value."""

from __future__ import annotations

import pytest

from orchestrator.credentials import credential_in
from orchestrator.jobs import check_env
from orchestrator.spec import SpecError, load_spec
from tests.unit.test_spec import changed, minimal_raw

SECRET = "wJalrXUtnFEMIK7MDENGbPxRfiCYEXAMPLEKEY"
LEAKS = [
    pytest.param(
        "data.sources.a.path", f"s3://AKIAIOSFODNN7EXAMPLE:{SECRET}@bucket/a.jsonl", id="userinfo"
    ),
    pytest.param(
        "data.eval.corpus",
        f"https://bucket.s3.amazonaws.com/c.jsonl?X-Amz-Credential=x&X-Amz-Signature={SECRET}",
        id="presigned",
    ),
    pytest.param(
        "data.eval.qrels", f"https://acct.blob.core.windows.net/q.tsv?sv=1&sig={SECRET}", id="sas"
    ),
    pytest.param("model.base", "hf_" + "a1B2c3D4" * 5, id="hf-token"),
    pytest.param("description", "uses key AKIAIOSFODNN7EXAMPLE", id="aws-key-id"),
    pytest.param("storage.uri", f"s3://runs/x?token={SECRET}", id="token-param"),
]


@pytest.mark.parametrize(("field", "value"), LEAKS)
def test_a_spec_carrying_a_credential_is_refused_by_its_path(field, value):
    raw = changed(minimal_raw(), {field: value})
    with pytest.raises(SpecError) as info:
        load_spec(raw)
    (problem,) = info.value.problems
    assert problem.startswith(f"{field}: holds ")
    assert SECRET not in str(info.value) and "AKIA" not in str(info.value)


def test_an_override_carrying_a_credential_is_refused_too():
    with pytest.raises(SpecError, match=r"model\.base: holds an access key"):
        load_spec(minimal_raw(), ["model.base=ghp_" + "x" * 36])


@pytest.mark.parametrize(
    "text",
    ["s3://bucket/prefix", "data/squad/train.jsonl", "https://example.com/a?page=2", "sk-8", "a@b"],
)
def test_ordinary_strings_are_not_credentials(text):
    assert credential_in(text) is None


@pytest.mark.parametrize(
    ("env", "why"),
    [
        ({"MY_PAT": "abc"}, "its name"),
        ({"GIT_AUTH_HEADER": "abc"}, "its name"),
        ({"DATA_URL": f"https://user:{SECRET}@host/data"}, "its value"),
        ({"NOTES": "AKIAIOSFODNN7EXAMPLE"}, "its value"),
    ],
)
def test_job_environment_refuses_secret_names_and_values(env, why):
    with pytest.raises(SpecError) as info:
        check_env(env)
    (problem,) = info.value.problems
    assert why in problem and SECRET not in problem


def test_job_environment_takes_plain_settings():
    check_env({"HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2", "DATA_URL": "https://host/data"})
