from pathlib import Path

from waybill.asyncapi import build_document, render

DOCUMENT = Path(__file__).resolve().parents[2] / "docs" / "asyncapi.yaml"


def test_committed_asyncapi_document_is_up_to_date() -> None:
    assert DOCUMENT.read_text() == render(), "stale: run `waybill asyncapi` and commit it"


def test_every_channel_has_its_payload_schema() -> None:
    document = build_document()
    schemas = document["components"]["schemas"]
    for message in document["components"]["messages"].values():
        assert message["payload"]["$ref"].rsplit("/", 1)[-1] in schemas
    receivers = {
        op["channel"]["$ref"] for op in document["operations"].values() if op["action"] == "receive"
    }
    assert "#/channels/orders_placed" in receivers
