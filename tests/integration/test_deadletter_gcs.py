"""The dead-letter store in a local folder and under ``gs://`` (gcp-storage-emulator): same tests.

The merge jobs on Dataflow have no shared disk, so their dead letters go to GCS.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from connectors.deadletter import DeadLetterNotFound, DeadLetterStore, NewDeadLetter
from state_models.errors import DecodeError

pytestmark = pytest.mark.integration


@pytest.fixture(params=["local", "gcs"])
def folder(request: Any, tmp_path: Path) -> str:
    if request.param == "local":
        return str(tmp_path / "dead_letters")
    return f"gs://{request.getfixturevalue('gcs_bucket')}/jobs/dead_letters"


def test_put_list_show_remove(folder: str) -> None:
    store = DeadLetterStore(folder)
    assert store.list() == [] and len(store) == 0
    first = store.put_many(
        [
            NewDeadLetter.from_error(
                DecodeError("not valid JSON", raw=b'{"op": "u"'), source="billing", table="t1"
            ),
            NewDeadLetter("bad type", "SchemaChangeError", b"\xff\xfe", "billing", "t2"),
        ]
    )
    second = store.put("unknown table", "UnknownTableError", "{}", "shop", "t3")

    again = DeadLetterStore(folder)  # another process sees the same letters, in arrival order
    assert [d.id for d in again.list()] == [*(d.id for d in first), second.id]
    assert again.show(first[0].id).raw_bytes() == b'{"op": "u"'
    assert again.show(first[1].id).raw_bytes() == b"\xff\xfe"  # kept exactly (base64)
    assert [d.table for d in again.list(source="billing")] == ["t1", "t2"]
    with pytest.raises(DeadLetterNotFound, match="did you mean"):
        again.show(first[0].id[:-1] + "9")

    assert again.remove([first[0].id, second.id]) == 2
    assert [d.id for d in DeadLetterStore(folder).list()] == [first[1].id]
    assert again.remove([first[1].id]) == 1 and len(again) == 0
