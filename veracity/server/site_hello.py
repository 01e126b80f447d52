"""Ask each matched node which site it is and what software it runs (``query.hello``).

The ServerApp does this once at the start of every run and keeps the answers beside the
ledger (:mod:`veracity.server.coordinator.site_software`) for the console's overview. A
node that does not answer in time, answers with an error or names another site than the
one it was matched to is left out and logged; the run goes on either way.
"""

from __future__ import annotations

import logging

from flwr.app import Message, RecordDict

from veracity.contracts.messages import HelloRecord
from veracity.core.fields import format_timestamp
from veracity.errors import VeracityError
from veracity.server.coordinator.site_software import SiteSoftware
from veracity.server.polling_grid import PollingGrid, replies_by_site, reply_record

__all__ = ["MESSAGE_TYPE", "ask_site_software"]

log = logging.getLogger(__name__)

MESSAGE_TYPE = "query.hello"


def ask_site_software(
    grid: PollingGrid, sites_by_node: dict[int, str], *, run_id: str, timeout: float
) -> list[SiteSoftware]:
    """The software reports of the nodes in ``sites_by_node`` that answered within ``timeout``."""
    messages = [
        Message(RecordDict({}), dst_node_id=node, message_type=MESSAGE_TYPE)
        for node in sites_by_node
    ]
    reports: list[SiteSoftware] = []
    for site, reply in replies_by_site(grid, messages, sites_by_node, timeout=timeout):
        try:
            hello = HelloRecord.from_record(reply_record(reply, HelloRecord.RECORD))
        except (VeracityError, KeyError, ValueError) as err:
            log.warning("hello of %s dropped: %s", site, err)
            continue
        if hello.site != site:
            log.warning("node of %s says it is %r; its report is dropped", site, hello.site)
            continue
        reports.append(
            SiteSoftware(
                site=site,
                version=hello.version,
                code_hash=hello.code_hash,
                run_id=run_id,
                reported_at=format_timestamp(),
            )
        )
    return reports
