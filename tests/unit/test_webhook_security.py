from pathlib import Path

from ducc.model.reference import Reference
from ducc.settings import Settings
from ducc.web.policy import Policy
from ducc.web.security import Tokens, presented_token
from ducc.web.senders import TOKEN_SOURCES


def test_tokens_per_source_override_the_common_one_and_files_work(tmp_path: Path):
    secret = tmp_path / "quay-token"
    secret.write_text("from-a-file\n")
    settings = Settings.from_env({"DUCC_WEBHOOK_TOKEN": "common", "DUCC_WEBHOOK_TOKEN_QUAY_FILE": str(secret)})
    tokens = Tokens.of(settings.web.tokens, TOKEN_SOURCES)
    assert tokens.check("registry", "common") and tokens.check("api", "common")
    assert tokens.check("quay", "from-a-file") and not tokens.check("quay", "common")
    assert not tokens.check("registry", "commo") and not tokens.check("registry", "") and not tokens.check("registry", None)


def test_no_token_configured_refuses_everything():
    tokens = Tokens.of(Settings.from_env({}).web.tokens, TOKEN_SOURCES)
    assert not tokens.configured("registry") and not tokens.check("registry", "anything")


def test_token_is_taken_from_the_bearer_header_a_bare_header_or_the_query():
    assert presented_token("Bearer abc", None) == "abc"
    assert presented_token("abc", None) == "abc"
    assert presented_token(None, "q") == "q"
    assert presented_token("Basic dXNlcjpwdw==", "q") is None
    assert presented_token("Bearer ", None) is None and presented_token("Bearer", None) is None


def test_policy_allows_globs_and_wishlist_entries_and_fails_closed(tmp_path: Path):
    wishlist = tmp_path / "wishlist.yaml"
    wishlist.write_text("version: 1\ninput:\n  - image: 'reg.example.org/atlas/base:21.*'\n    platforms: [linux/arm64]\n")
    policy = Policy(["registry.example.org/team/*", "ghcr.io/org/tool"], wishlist)
    assert policy.decide(Reference.parse("registry.example.org/team/app:1")).allowed
    assert policy.decide(Reference.parse("ghcr.io/org/tool:anything")).allowed
    assert not policy.decide(Reference.parse("ghcr.io/org/other:1")).allowed
    allowed = policy.decide(Reference.parse("reg.example.org/atlas/base:21.2"))
    assert allowed.allowed and str(allowed.platforms[0]) == "linux/arm64"
    assert not policy.decide(Reference.parse("reg.example.org/atlas/base:22.0")).allowed
    assert not Policy([]).decide(Reference.parse("ubuntu")).allowed
