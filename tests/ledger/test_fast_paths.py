"""The verifier's fast paths give exactly the reference's answers.

* Entry templates (``veracity.ledger.templates``) read only entries the reference reading
  (``parse_body`` + ``validate_payload``) accepts, and read them the same.
* ``verify`` with templates and verify with every row on the reference path agree: same
  report for an intact ledger, same first bad seq and reason for a tampered one.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.hypothesis_examples import examples
from veracity.contracts.events import PAYLOADS, ROOT_ACTOR, validate_payload
from veracity.core.fields import format_timestamp
from veracity.core.jcs import encode_canonical
from veracity.errors import InputError, LedgerIntegrityError
from veracity.ledger import verify_fast
from veracity.ledger.entry import parse_body, statement_bytes, statement_of_body
from veracity.ledger.ledger import EventRequest, Ledger
from veracity.ledger.statement import sign_statement
from veracity.ledger.templates import TEMPLATES, read_entry, template_for
from veracity.ledger.verify import RootSignatures, VerifyReport, verify_bundle_file

from .conftest import T0, dataset_payload, enrolment_payload, seeded_key

ROOT = seeded_key("root")
SITE = seeded_key("hospital-a-fast")
HASH = hashlib.sha256(b"x").hexdigest()


def inference_payload(i: int) -> dict[str, Any]:
    return {
        "model_hash": HASH,
        "requester": f"clinic-{i % 13}",
        "he_params_hash": hashlib.sha256(b"he").hexdigest(),
        "batch_size": 16,
        "request_hash": hashlib.sha256(f"request/{i}".encode()).hexdigest(),
        "served_total": 16 * (i + 1),
    }


# ---------------------------------------------------------------------- templates


def test_templates_pin_their_schemas() -> None:
    for kind, template in TEMPLATES.items():
        fields = PAYLOADS[kind].model_fields
        # The template's keys are literal: an entry carrying an optional field (a
        # dataset.registered's ``kind``) cannot match it and is read by the reference.
        assert template.fields == {n for n, f in fields.items() if f.is_required()}, kind
        # The fast path does no per-kind bookkeeping: these kinds need none.
        assert kind not in {
            "key.enrolled",
            "key.revoked",
            "round.completed",
            "checkpoint",
            "checkpoint.cosigned",
        }


def test_the_workloads_entries_take_the_fast_path(tmp_path: Path) -> None:
    ledger = _workload_ledger(tmp_path / "ledger.db", count=60)
    try:
        taken = 0
        for entry in ledger.iter_entries():
            template = template_for(entry.body)
            assert (template is None) == (entry.kind not in TEMPLATES)
            if template is not None:
                assert template_for(entry.body, entry.kind) is template
                assert read_entry(template, entry.body) is not None, entry.body
                taken += 1
        assert taken >= 50
    finally:
        ledger.close()


def test_an_entry_with_an_optional_payload_field_is_left_to_the_reference() -> None:
    template = TEMPLATES["dataset.registered"]
    site, moment = "hospital-a-fast", format_timestamp(T0)
    for extra, expected in (({}, True), ({"kind": "signals"}, False)):
        payload = dataset_payload(site, "d1", signed_at=moment) | extra
        validate_payload("dataset.registered", payload)  # the reference accepts both
        body = encode_canonical(
            {"actor": site, "kind": "dataset.registered", "payload": payload, "prev": HASH,
             "seq": 1, "signature": base64.b64encode(bytes(64)).decode(), "ts": moment}
        )  # fmt: skip
        assert (read_entry(template, body) is not None) == expected


_EDGE_TEXT = [
    "",
    "a",
    "a" * 128,
    "a" * 129,
    'quote"d',
    "back\\slash",
    "new\nline",
    "tab\t",
    "del\x7f",
    "nul\x00",
    "caf\u00e9",
    "\u2028",
    "\ud7ff",
    " ",
    "hospital-a",
    "hospital-b",
    "-dash",
    "x" * 10_001,
]
_TEXT = st.one_of(
    st.sampled_from(_EDGE_TEXT),
    st.text(max_size=12),
    st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=127), max_size=130),
    st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,12}", fullmatch=True),
)
_HASHES = st.one_of(
    st.from_regex(r"[0-9a-f]{64}", fullmatch=True),
    st.sampled_from(["A" * 64, "a" * 63, "a" * 65, "g" * 64, "0" * 64 + "\n"]),
    _TEXT,
)
_INTS = st.one_of(
    st.integers(min_value=-3, max_value=40),
    st.sampled_from(
        [2**31 - 1, 2**31, 2**31 + 1, 10**9 - 1, 10**9, 10**15 - 1, 10**15, 2**53 - 1, 2**53]
    ),
    st.integers(),
    st.booleans(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.none(),
)
_TIMESTAMPS = st.one_of(
    st.datetimes(timezones=st.just(T0.tzinfo)).map(format_timestamp),
    st.sampled_from(
        [
            "2026-02-30T00:00:00.000000Z",
            "2026-11-27T25:00:00Z",
            "2026-11-27T12:00:00+01:00",
            "2026-11-27T12:00:00.123456789-05:30",
            "2026-11-27T12:00:00Z\n",
            "2026-11-27 12:00:00Z",
            "\u0662026-11-27T12:00:00Z",
        ]
    ),
    _TEXT,
)
_VALUES: dict[str, st.SearchStrategy[Any]] = {
    "hash": _HASHES,
    "text": _TEXT,
    "int": _INTS,
    "time": _TIMESTAMPS,
    "list": st.one_of(st.lists(_TEXT, max_size=4), _TEXT, _INTS),
}
_KINDS_OF_FIELDS: dict[str, dict[str, str]] = {
    "inference.served": {
        "model_hash": "hash",
        "requester": "text",
        "he_params_hash": "hash",
        "batch_size": "int",
        "request_hash": "hash",
        "served_total": "int",
    },
    "dataset.registered": {
        "site": "text",
        "dataset_id": "text",
        "commitment": "hash",
        "schema_hash": "hash",
        "rows": "int",
        "label": "text",
        "features": "list",
        "signed_at": "time",
    },
}


def _valid(kind: str) -> dict[str, Any]:
    if kind == "inference.served":
        return inference_payload(3)
    return dataset_payload("hospital-a", "d1", signed_at=format_timestamp(T0))


_SIGNATURES = st.one_of(
    st.binary(min_size=64, max_size=64).map(lambda raw: base64.b64encode(raw).decode()),
    st.binary(max_size=70).map(lambda raw: base64.b64encode(raw).decode()),
    _TEXT,
)
_FAULTS = ["kind", "field", "field", "pop", "extra", "actor", "prev", "seq", "signature", "ts"]
_FAULTS += ["mutation", "mutation"]


@st.composite
def _entries(draw: st.DrawFn) -> bytes:
    """Entry bytes of a templated kind with up to two faults near the templates' edges.

    A fault replaces one part with an edge value (which may still be valid) or changes
    one byte of the canonical bytes; with no fault the entry is valid.
    """
    faults = draw(
        st.sampled_from([0, 0, 1, 1, 1, 2]).flatmap(
            lambda count: st.lists(st.sampled_from(_FAULTS), min_size=count, max_size=count)
        )
    )
    kind = draw(st.sampled_from(sorted(TEMPLATES)))
    if "kind" in faults:
        kind = draw(st.sampled_from([*TEMPLATES, "note.recorded", "checkpoint"]))
    payload = _valid(kind) if kind in TEMPLATES else {"text": "hello"}
    fields = _KINDS_OF_FIELDS.get(kind, {})
    if "field" in faults and fields:
        name = draw(st.sampled_from(sorted(fields)))
        payload[name] = draw(_VALUES[fields[name]])
    if "pop" in faults:
        payload.pop(draw(st.sampled_from(sorted(payload))))
    if "extra" in faults:
        payload[draw(st.sampled_from(["extra", "site", "zzz", "a"]))] = draw(_TEXT)
    site = payload.get("site")
    actor = site if kind == "dataset.registered" and isinstance(site, str) else ROOT_ACTOR
    document = {
        "actor": draw(_TEXT) if "actor" in faults else actor,
        "kind": kind,
        "payload": payload,
        "prev": draw(_HASHES) if "prev" in faults else HASH,
        "seq": draw(_INTS) if "seq" in faults else draw(st.integers(0, 10**6)),
        "signature": draw(_SIGNATURES)
        if "signature" in faults
        else draw(
            st.binary(min_size=64, max_size=64).map(lambda raw: base64.b64encode(raw).decode())
        ),
        "ts": draw(_TIMESTAMPS) if "ts" in faults else format_timestamp(T0),
    }
    try:
        body = encode_canonical(document)
    except InputError:
        body = b"{}"
    if "mutation" in faults:
        position = draw(st.integers(min_value=0, max_value=len(body) - 1))
        byte = bytes([draw(st.integers(min_value=0, max_value=255))])
        how = draw(st.sampled_from(["replace", "insert", "delete"]))
        if how == "replace":
            body = body[:position] + byte + body[position + 1 :]
        elif how == "insert":
            body = body[:position] + byte + body[position:]
        else:
            body = body[:position] + body[position + 1 :]
    return body


@settings(max_examples=examples(400), deadline=None)
@given(body=_entries())
def test_a_template_reads_only_what_the_reference_accepts(body: bytes) -> None:
    taken = False
    for template in TEMPLATES.values():
        fast = read_entry(template, body)
        if fast is None:
            continue
        taken = True
        entry = parse_body(body)  # the reference must accept the bytes ...
        validate_payload(entry.kind, entry.payload, actor=entry.actor)  # ... and the payload
        assert entry.kind == template.kind
        assert fast == (
            entry.actor,
            entry.prev.encode("ascii"),
            entry.seq,
            entry.signature.encode("ascii"),
            entry.ts,
            None if entry.root_signature is None else entry.root_signature.encode("ascii"),
        )
        raw = base64.b64decode(entry.signature.encode("ascii"), validate=True)
        assert len(raw) == 64
        assert binascii.a2b_base64(fast[3]) == raw
        assert statement_of_body(body) == statement_bytes(entry.kind, entry.actor, entry.payload)
        assert template_for(body) is template
    event("fast path" if taken else "reference only")


# ---------------------------------------------------------------------- verify


def _workload_ledger(path: Path, *, count: int) -> Ledger:
    ledger = Ledger.init(f"sqlite:///{path}", root_key=ROOT, now=T0, checkpoint_every=16)
    ledger.append(
        "key.enrolled",
        ROOT_ACTOR,
        enrolment_payload(ledger.log_id, "hospital-a", SITE),
        signer=ROOT,
        now=T0,
    )
    requests = []
    for i in range(count):
        if i % 4 == 1:
            payload = dataset_payload("hospital-a", f"d{i}", signed_at=format_timestamp(T0))
            signature = sign_statement(
                SITE, "dataset.registered", "hospital-a", payload, log_id=ledger.log_id
            )
            requests.append(
                EventRequest("dataset.registered", "hospital-a", payload, signature=signature)
            )
        elif i % 9 == 5:
            requests.append(EventRequest("note.recorded", ROOT_ACTOR, {"text": f"n{i}"}, ROOT))
        else:
            requests.append(
                EventRequest("inference.served", ROOT_ACTOR, inference_payload(i), ROOT)
            )
    ledger.append_batch(requests, now=T0)
    ledger.append("inference.served", ROOT_ACTOR, inference_payload(999), signer=ROOT, now=T0)
    return ledger


@pytest.fixture(scope="module")
def workload(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    path = tmp_path_factory.mktemp("fast") / "ledger.db"
    ledger = _workload_ledger(path, count=90)
    size = ledger.size()
    ledger.close()
    return path, size


def _outcome(
    path: Path, *, reference: bool, bundle: bool, root_signatures: RootSignatures
) -> VerifyReport | tuple[int | None, str]:
    """Verify ``path``; with ``reference``, every row takes the reference path."""
    with pytest.MonkeyPatch.context() as patch:
        if reference:
            patch.setattr(verify_fast, "template_for", lambda body, kind=None: None)
        try:
            if bundle:
                return verify_bundle_file(
                    path, trusted_root=ROOT.public, root_signatures=root_signatures
                )
            with Ledger.open(f"sqlite:///{path}") as ledger:
                return ledger.verify(ROOT.public, root_signatures=root_signatures)
        except LedgerIntegrityError as err:
            return (err.seq, str(err))


def _scratch(template: tuple[Path, int]) -> Iterator[Path]:
    directory = template[0].parent / "scratch"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir()
    path = directory / "ledger.db"
    shutil.copy(template[0], path)
    yield path
    shutil.rmtree(directory, ignore_errors=True)


def _sql(path: Path, statement: str, params: tuple[Any, ...]) -> None:
    connection = sqlite3.connect(path, isolation_level=None)
    try:
        connection.execute("PRAGMA foreign_keys = OFF")
        connection.execute("PRAGMA ignore_check_constraints = ON")
        connection.execute(statement, params)
    finally:
        connection.close()


def test_fast_and_reference_verification_agree_on_the_intact_ledger(
    workload: tuple[Path, int],
) -> None:
    modes: tuple[RootSignatures, ...] = ("all", "tail")
    for mode in modes:
        fast = _outcome(workload[0], reference=False, bundle=False, root_signatures=mode)
        assert isinstance(fast, VerifyReport)
        assert fast == _outcome(workload[0], reference=True, bundle=False, root_signatures=mode)


_COLUMN_EDITS: dict[str, Callable[[Any], Any]] = {
    "kind": lambda value: "note.recorded",
    "actor": lambda value: value + "x",
    "ts": lambda value: value.replace("2026", "2027"),
    "prev_seq": lambda value: None if value is None else value + 1,
    "prev": lambda value: hashlib.sha256(value).digest(),
    "hash": lambda value: hashlib.sha256(value).digest(),
}


@settings(
    max_examples=examples(40),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_fast_and_reference_verification_agree_on_any_tampering(
    workload: tuple[Path, int], data: st.DataObject
) -> None:
    for path in _scratch(workload):
        seq = data.draw(st.integers(min_value=1, max_value=workload[1] - 1), label="seq")
        what = data.draw(st.sampled_from(["body", "body", "body", *_COLUMN_EDITS]), label="what")
        connection = sqlite3.connect(path)
        column = what if what != "body" else "seq"
        body, current = connection.execute(
            f"SELECT body, {column} FROM ledger_entry WHERE seq = ?",  # noqa: S608
            (seq,),
        ).fetchone()
        connection.close()
        if what == "body":
            position = data.draw(st.integers(min_value=0, max_value=len(body) - 1))
            value = data.draw(st.integers(min_value=0, max_value=255))
            changed = body[:position] + bytes([value]) + body[position + 1 :]
            _sql(path, "UPDATE ledger_entry SET body = ? WHERE seq = ?", (changed, seq))
            if data.draw(st.booleans(), label="rehash"):
                digest = hashlib.sha256(b"\x00" + changed).digest()
                _sql(path, "UPDATE ledger_entry SET hash = ? WHERE seq = ?", (digest, seq))
        else:
            _sql(
                path,
                f"UPDATE ledger_entry SET {what} = ? WHERE seq = ?",  # noqa: S608
                (_COLUMN_EDITS[what](current), seq),
            )
        mode: RootSignatures = data.draw(st.sampled_from(["all", "tail"]), label="mode")
        fast = _outcome(path, reference=False, bundle=False, root_signatures=mode)
        assert fast == _outcome(path, reference=True, bundle=False, root_signatures=mode)
        bundle = path.with_suffix(".bundle")
        ledger = Ledger.open(f"sqlite:///{path}")
        try:
            ledger.export_bundle(bundle)
        except InputError:
            # Bytes no canonical entry can hold (a raw newline) are refused at export;
            # verification of the database found the same entry bad.
            assert isinstance(fast, tuple)
            continue
        finally:
            ledger.close()
        fast_bundle = _outcome(bundle, reference=False, bundle=True, root_signatures=mode)
        assert fast_bundle == _outcome(bundle, reference=True, bundle=True, root_signatures=mode)


@pytest.mark.parametrize(
    "change", ["hash = hex(hash)", "prev = hex(prev)", "body = CAST(body AS TEXT)"]
)
def test_a_blob_column_stored_as_text_fails_at_its_seq(
    workload: tuple[Path, int], change: str
) -> None:
    for path in _scratch(workload):
        seq = 7
        _sql(path, f"UPDATE ledger_entry SET {change} WHERE seq = ?", (seq,))  # noqa: S608
        fast = _outcome(path, reference=False, bundle=False, root_signatures="all")
        assert fast == _outcome(path, reference=True, bundle=False, root_signatures="all")
        assert isinstance(fast, tuple)
        assert fast[0] == seq


@pytest.mark.parametrize("column", ["kind", "actor", "ts"])
def test_a_text_column_that_is_not_utf8_fails_at_its_seq(
    workload: tuple[Path, int], column: str
) -> None:
    for path in _scratch(workload):
        seq = 9
        _sql(
            path,
            f"UPDATE ledger_entry SET {column} = CAST(X'FF00FE' AS TEXT) WHERE seq = ?",  # noqa: S608
            (seq,),
        )
        fast = _outcome(path, reference=False, bundle=False, root_signatures="all")
        assert fast == _outcome(path, reference=True, bundle=False, root_signatures="all")
        assert isinstance(fast, tuple)
        assert fast[0] == seq
