"""Judge0's callback: the default fields, base64-encoded, PUT to `callback_url`."""

from __future__ import annotations

import msgspec

from sandboxd.compat import put_json
from sandboxd.compat.judge0.request import Request
from sandboxd.compat.judge0.serializer import view
from sandboxd.compat.judge0.tables import CONFIG, DEFAULT_FIELDS
from sandboxd.schema import JobInfo


async def deliver_callback(token: str, req: Request, info: JobInfo, allow_private: bool) -> None:
    """PUT the default fields (base64) to `callback_url` once the job is final and
    readable; called by whoever made it final (the daemon, or the fleet host)."""
    if not req.callback_url:
        return
    body = msgspec.json.encode(view(token, req, info, DEFAULT_FIELDS, True))
    await put_json(req.callback_url, body, allow_private, CONFIG["callbacks_max_tries"], CONFIG["callbacks_timeout"])
