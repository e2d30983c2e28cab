"""Worker remote control: Celery's `conf` inspect command, with every URL's password masked.

Celery masks `broker_url` by that exact name only. Configured from Django settings under the
CELERY_ namespace, the key is CELERY_BROKER_URL, and any other setting holding the URL (REDIS_URL)
is not masked either, so `celery inspect conf` and Flower's worker page (which asks every worker
for its conf) showed the broker password. Imported from MonitoringConfig.ready(), after Celery's
own commands are registered, so this one replaces `conf` and its alias `dump_conf`.
"""

from collections.abc import Mapping
from typing import Any

from celery.utils.serialization import jsonify, strtobool
from celery.worker.control import _wanted_config_key, inspect_command
from kombu.utils.encoding import safe_repr
from kombu.utils.url import maybe_sanitize_url

MASK = "********"


def mask_urls(value: Any) -> Any:
    """`value` with the password of every URL in it (at any depth) replaced by MASK."""
    if isinstance(value, Mapping):
        return {key: mask_urls(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(mask_urls(item) for item in value)
    return maybe_sanitize_url(value, mask=MASK)


@inspect_command(
    alias="dump_conf",
    signature="[include_defaults=False]",
    args=[("with_defaults", strtobool)],
)
def conf(state: Any, with_defaults: bool = False, **kwargs: Any) -> Any:
    """List configuration, URL passwords masked (Celery's own `conf` masks only `broker_url`)."""
    table = mask_urls(state.app.conf.table(with_defaults=with_defaults))
    return jsonify(table, keyfilter=_wanted_config_key, unknown_type_filter=safe_repr)
