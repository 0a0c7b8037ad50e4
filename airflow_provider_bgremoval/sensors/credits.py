"""Wait for credits: :class:`CreditsSensor`, one sensor for every vendor (picked by connection type)."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import closing
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue
from airflow.sdk.exceptions import AirflowException

from airflow_provider_bgremoval._compat import AirflowFailException, conf
from airflow_provider_bgremoval.credits import (
    describe_error,
    describe_poll_failure,
    describe_wait,
    has_enough,
    is_fatal_balance_error,
    parse_min_credits,
)
from airflow_provider_bgremoval.hooks.base import BackgroundRemovalHook
from airflow_provider_bgremoval.operators.bucket_job import is_template
from airflow_provider_bgremoval.triggers.credits import CreditsTrigger

if TYPE_CHECKING:
    from airflow.sdk import Context


class CreditsSensor(BaseSensorOperator):
    """
    Wait until a vendor account has at least ``min_credits`` usable credits (free balance calls only);
    return ``Balance.as_dict()``. Modes, deferral and failures: docs/credits.md.

    :param conn_id: a ``pixelcut``, ``pixian`` or ``poof`` connection.
    :param min_credits: the threshold (templated), compared exactly; a balance equal to it passes.
    :param deferrable: wait in the triggerer (default: ``[operators] default_deferrable``).
    :param kwargs: the :class:`~airflow.sdk.BaseSensorOperator` options (``mode``, ``timeout``…).
    """

    template_fields: Sequence[str] = ("conn_id", "min_credits")
    ui_color = "#fdf1d6"

    def __init__(
        self,
        *,
        conn_id: str,
        min_credits: float | int | str,
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.conn_id = conn_id
        self.min_credits = min_credits
        self.deferrable = deferrable
        if not is_template(min_credits):
            parse_min_credits(min_credits)  # fail at DAG parse when the value is already known

    def get_hook(self) -> BackgroundRemovalHook[Any]:
        """The vendor hook for ``conn_id``."""
        return BackgroundRemovalHook.get_hook(self.conn_id)

    def poke(self, context: Context) -> PokeReturnValue:
        """Read the balance once; done when the usable balance reaches ``min_credits`` (else maybe defer)."""
        try:
            threshold = parse_min_credits(self.min_credits)  # a template may render to a non-number
            with closing(self.get_hook()) as hook:
                balance = hook.get_balance()
        except Exception as exc:
            if is_fatal_balance_error(exc):  # a bad threshold and a missing connection are, too
                raise AirflowFailException(
                    f"{type(self).__name__} on connection {self.conn_id!r}: {describe_error(exc)}"
                ) from exc
            self.log.warning("%s", describe_poll_failure(self.conn_id, exc))
            return PokeReturnValue(is_done=False)
        self.log.info("%s", describe_wait(self.conn_id, balance, threshold))
        if has_enough(balance, threshold):
            return PokeReturnValue(is_done=True, xcom_value=balance.as_dict())
        if self.deferrable:  # after one poke on the worker, wait in the triggerer
            self.defer(
                trigger=self.trigger(),
                method_name="execute_complete",
                timeout=timedelta(seconds=self.timeout),
            )
        return PokeReturnValue(is_done=False)

    def trigger(self) -> CreditsTrigger:
        """The trigger this sensor defers to (primitives only)."""
        return CreditsTrigger(
            conn_id=self.conn_id,
            min_credits=str(parse_min_credits(self.min_credits)),
            poll_interval=float(self.poke_interval),
            exponential_backoff=bool(self.exponential_backoff),
            max_poll_interval=self.max_wait.total_seconds() if self.max_wait is not None else None,
        )

    def execute_complete(self, context: Context, event: dict[str, Any] | None = None) -> dict[str, Any]:
        """
        Resume after the trigger fired: return the balance, or fail.

        :param context: the task context.
        :param event: the trigger's event payload.
        """
        if not event:
            raise AirflowException(f"{type(self).__name__}: resumed without a trigger event")
        if event.get("status") == "success":
            # The trigger's last log line (in this task's log) has the balance against the threshold.
            self.log.info("%s: met after %s poll(s) in the triggerer", self.conn_id, event.get("polls"))
            return dict(event.get("balance") or {})
        message = str(event.get("message") or f"trigger reported {event.get('status')!r}")
        if event.get("fatal"):
            raise AirflowFailException(message)
        raise AirflowException(message)
