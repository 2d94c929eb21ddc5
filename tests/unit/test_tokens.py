from shared.http import new_token, role_of_token
from waybill.cli import build_parser
from waybill.system import random_tokens


def test_generated_tokens_can_follow_an_option_on_the_command_line() -> None:
    # one in 64 URL-safe tokens would begin with "-", which argparse reads as an option
    tokens = [new_token() for _ in range(2000)] + [
        t for _ in range(200) for t in random_tokens().values()
    ]
    assert not [t for t in tokens if t.startswith("-")]
    assert len(set(tokens)) == len(tokens)
    for token in tokens[:50]:
        args = build_parser().parse_args(["sla", "--token", token])
        assert args.token == token


def test_a_token_beginning_with_a_dash_is_given_with_an_equals_sign() -> None:
    args = build_parser().parse_args(["sla", "--token=-Zx9"])
    assert args.token == "-Zx9"
    assert role_of_token({"ops": "-Zx9"}, args.token) == "ops"
