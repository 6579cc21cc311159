import pytest

from ducc.registry.challenge import parse_challenges

CASES = [
    (
        'Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:samalba/my-app:pull,push"',
        [("bearer", {"realm": "https://auth.docker.io/token", "service": "registry.docker.io",
                     "scope": "repository:samalba/my-app:pull,push"})],
    ),
    ('Basic realm="ducc-test"', [("basic", {"realm": "ducc-test"})]),
    (
        'Basic realm="a, b", Bearer realm="https://t.example/token", scope="repository:x/y:pull"',
        [("basic", {"realm": "a, b"}), ("bearer", {"realm": "https://t.example/token", "scope": "repository:x/y:pull"})],
    ),
    ('Bearer realm=token-realm , error="invalid_token"', [("bearer", {"realm": "token-realm", "error": "invalid_token"})]),
    ('Bearer realm="quote\\"inside"', [("bearer", {"realm": 'quote"inside'})]),
]


@pytest.mark.parametrize("header,expected", CASES, ids=["docker-hub", "basic", "two-challenges", "token-values", "escaped-quote"])
def test_www_authenticate_is_tokenised_not_split_on_commas(header, expected):
    parsed = [(c.scheme, c.params) for c in parse_challenges(header)]
    assert parsed == expected


def test_unterminated_quote_is_an_error():
    with pytest.raises(ValueError):
        parse_challenges('Bearer realm="oops')
