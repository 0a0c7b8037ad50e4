"""Wait for credits: :class:`CreditsSensor`, one sensor for every vendor (picked by connection type)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import aclosing, closing
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from airflow.sdk import BaseSensorOperator, PokeReturnValue
from airflow.sdk.exceptions import AirflowException

from airflow_provider_bgremoval._compat import AirflowFailException, conf
from airflow_provider_bgremoval._moved import warn_moved
from airflow_provider_bgremoval.credits import (
    POOLING_CHOICES,
    PoolTarget,
    describe_error,
    describe_poll_failure,
    is_fatal_balance_error,
    parse_min_credits,
    parse_min_images,
)
from airflow_provider_bgremoval.exceptions import InvalidOptionError
from airflow_provider_bgremoval.hooks.base import BackgroundRemovalHook
from airflow_provider_bgremoval.operators.bucket_job import check_choice, is_template, run_coroutine
from airflow_provider_bgremoval.options import load_list
from airflow_provider_bgremoval.triggers.credits import CreditsTrigger, Poll

if TYPE_CHECKING:
    from airflow.sdk import Context


class CreditsSensor(BaseSensorOperator):
    """
    Wait until a vendor account has at least ``min_credits`` usable credits (free balance calls only);
    return ``Balance.as_dict()``. With a list of accounts, wait until the pool has enough: ``pooling="any"``
    (one account alone) or ``"total"`` (the sum), in credits or in images (``min_images``, each account
    at its own cost per image); return ``PoolVerdict.as_dict()``. Modes, deferral and failures:
    docs/credits.md.

    :param conn_id: a ``pixelcut``, ``pixian`` or ``poof`` connection, or a list of them (a pool); templated
        (a template of a list may render it as JSON or Python text).
    :param min_credits: the threshold (templated), compared exactly; a balance equal to it passes.
    :param min_images: instead of ``min_credits``: the images the pool must pay for (templated).
    :param cost_per_image: with ``min_images``: credits per image, one number or ``{conn_id: number}``;
        default: each vendor's cost table.
    :param pooling: ``"any"`` or ``"total"`` (for a list of connections).
    :param deferrable: wait in the triggerer (default: ``[operators] default_deferrable``).
    :param kwargs: the :class:`~airflow.sdk.BaseSensorOperator` options (``mode``, ``timeout``…).
    """

    template_fields: Sequence[str] = ("conn_id", "min_credits", "min_images")
    ui_color = "#fdf1d6"

    def __init__(
        self,
        *,
        conn_id: str | Sequence[str],
        min_credits: float | int | str | None = None,
        min_images: int | str | None = None,
        cost_per_image: float | int | str | Mapping[str, float | int | str] | None = None,
        pooling: str = "any",
        deferrable: bool = conf.getboolean("operators", "default_deferrable", fallback=False),
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.conn_id = conn_id
        self.min_credits = min_credits
        self.min_images = min_images
        self.cost_per_image = cost_per_image
        self.pooling = pooling
        self.deferrable = deferrable
        check_choice(pooling, POOLING_CHOICES, "pooling")
        if (min_credits is None) == (min_images is None):
            raise InvalidOptionError("min_credits", "give either min_credits or min_images")
        if not isinstance(conn_id, str) and not is_template(conn_id) and not conn_id:
            raise InvalidOptionError("conn_id", "expected a connection id or a non-empty list of them")
        if min_credits is not None and not is_template(min_credits):
            parse_min_credits(min_credits)  # fail at DAG parse when the value is already known
        if min_images is not None and not is_template(min_images):
            parse_min_images(min_images)

    def _given_conn_id(self) -> str | Sequence[str]:
        """``conn_id``, a rendered template of a list read back as that list (:func:`load_list`)."""
        value = self.conn_id
        if not isinstance(value, str) or not value.lstrip().startswith("["):
            return value
        rendered = load_list(value, "conn_id")
        if not isinstance(rendered, list) or not rendered:
            raise InvalidOptionError("conn_id", "expected a connection id or a non-empty list of them")
        return rendered

    @property
    def pooled(self) -> bool:
        """True for a list of connections or a target in images (the pool's XCom and trigger)."""
        return not isinstance(self._given_conn_id(), str) or self.min_images is not None

    @property
    def conn_ids(self) -> list[str]:
        """The connections, in order (one for a single connection)."""
        value = self._given_conn_id()
        return [value] if isinstance(value, str) else [str(c) for c in value]

    def pool_costs(self) -> dict[str, str]:
        """With ``min_images``: each account's cost per image (given, else its vendor's), as strings."""
        costs: dict[str, str] = {}
        given = self.cost_per_image
        if isinstance(given, Mapping) and (unknown := sorted(set(given) - set(self.conn_ids))):
            raise InvalidOptionError(  # a typo would silently price that account at its vendor's cost
                "cost_per_image",
                f"{', '.join(map(repr, unknown))} is not one of the connections {self.conn_ids}",
            )
        for conn_id in self.conn_ids if self.min_images is not None else ():
            value = given.get(conn_id) if isinstance(given, Mapping) else given
            if value is None:
                with closing(BackgroundRemovalHook.get_hook(conn_id)) as hook:
                    costs[conn_id] = str(hook.estimate_cost())
            else:
                costs[conn_id] = str(parse_min_credits(value, f"cost_per_image[{conn_id!r}]"))
        return costs

    def _fail(self, detail: BaseException | str) -> AirflowFailException:
        text = detail if isinstance(detail, str) else describe_error(detail)
        error = AirflowFailException(f"{type(self).__name__} on connection {self.conn_id!r}: {text}")
        error.__cause__ = detail if isinstance(detail, BaseException) else None
        return error

    async def _poll(self, trigger: CreditsTrigger) -> Poll:
        """The trigger's one poll, logged in this task's log."""
        if trigger.pooled:
            return await trigger.poll_pool(trigger.pool_target(), logger=self.log)
        threshold = parse_min_credits(trigger.min_credits)
        async with aclosing(await trigger.get_hook()) as hook:
            return await trigger.poll_account(hook, threshold, logger=self.log)

    def _trigger_or_none(self) -> CreditsTrigger | None:
        """The trigger; ``None`` (logged) when a connection read for a cost may be readable later."""
        try:
            return self.trigger(self.pool_costs())
        except Exception as exc:
            if is_fatal_balance_error(exc):  # a bad target or cost, a missing or bad connection
                raise self._fail(exc) from exc
            self.log.warning("%s", describe_poll_failure(str(self.conn_id), exc))
            return None

    def poke(self, context: Context) -> PokeReturnValue:
        """Poll once, as the trigger does; done when the target is met (else maybe defer)."""
        trigger = self._trigger_or_none()
        if trigger is None:  # a connection not readable yet: no trigger without its cost, poke again
            return PokeReturnValue(is_done=False)
        try:
            poll = run_coroutine(self._poll(trigger))
        except Exception as exc:  # the connection could not be read
            if is_fatal_balance_error(exc) or trigger.pooled:
                raise self._fail(exc) from exc
            self.log.warning("%s", describe_poll_failure(str(self.conn_id), exc))
            poll = Poll()  # not met: deferred as any other wait (the trigger reads it again)
        if poll.met is not None:
            return PokeReturnValue(is_done=True, xcom_value=poll.met)
        if poll.fatal is not None:
            raise self._fail(poll.fatal)
        if self.deferrable:  # after one poke on the worker, wait in the triggerer
            self.defer(
                trigger=trigger,
                method_name="execute_complete",
                timeout=timedelta(seconds=self.timeout),
            )
        return PokeReturnValue(is_done=False)

    def get_hook(self) -> BackgroundRemovalHook[Any]:
        """Deprecated: the vendor hook for ``conn_id`` (use ``BackgroundRemovalHook.get_hook(conn_id)``)."""
        warn_moved("CreditsSensor.get_hook()", "use BackgroundRemovalHook.get_hook(conn_id)")
        return BackgroundRemovalHook.get_hook(str(self.conn_id))

    def pool_target(self) -> PoolTarget:
        """Deprecated: what the pool waits for (use ``sensor.trigger(sensor.pool_costs()).pool_target()``)."""
        warn_moved("CreditsSensor.pool_target()", "use sensor.trigger(sensor.pool_costs()).pool_target()")
        return PoolTarget.parse(  # not the trigger's: a one-connection sensor's trigger has no pool
            self.conn_ids, self.pooling, self.min_credits, self.min_images, self.pool_costs()
        )

    def trigger(self, costs: Mapping[str, str] | None = None) -> CreditsTrigger:
        """
        The trigger this sensor defers to (primitives only).

        :param costs: a pool's cost per image of each account, as strings (with ``min_images``).
        """
        minimum = None if self.min_credits is None else str(parse_min_credits(self.min_credits))
        pool: dict[str, Any] = {}
        if self.pooled:
            images = None if self.min_images is None else parse_min_images(self.min_images)
            pool = {"pooling": self.pooling, "min_images": images, "costs": dict(costs or {})}
        return CreditsTrigger(
            conn_id=self.conn_ids if self.pooled else str(self.conn_id),
            min_credits=minimum,
            poll_interval=float(self.poke_interval),
            exponential_backoff=bool(self.exponential_backoff),
            max_poll_interval=self.max_wait.total_seconds() if self.max_wait is not None else None,
            **pool,
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
            return dict(event.get("pool") or event.get("balance") or {})
        message = str(event.get("message") or f"trigger reported {event.get('status')!r}")
        if event.get("fatal"):
            raise AirflowFailException(message)
        raise AirflowException(message)
