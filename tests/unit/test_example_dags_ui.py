"""What the Airflow UI shows for the example DAGs and the provider: trigger forms, DAG docs, Providers page.

The trigger form is built from the DAG's params as the API serves them (the serialized DAG's params,
``{name: {"value", "schema", "description"}}``); the DAG docs are ``doc_md`` rendered as Markdown;
the Providers page shows the provider's ``description`` after the API's RST clean-up.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from airflow.api_fastapi.core_api.services.public.providers import _remove_rst_syntax
from airflow.dag_processing.dagbag import DagBag
from airflow.sdk import DAG
from airflow.serialization.serialized_objects import DagSerialization

from airflow_provider_bgremoval.exceptions import InvalidOptionError
from airflow_provider_bgremoval.get_provider_info import get_provider_info
from airflow_provider_bgremoval.operators.preflight import ON_INSUFFICIENT_CHOICES
from airflow_provider_bgremoval.options import OUTPUT_FORMATS
from airflow_provider_bgremoval.pipeline.planning import BatchSpec
from airflow_provider_bgremoval.vendors.pixelcut import PixelcutScene

EXAMPLES = Path(__file__).resolve().parents[2] / "example_dags"

#: Params whose values form a closed set: the form must offer exactly the package's choices.
CLOSED_SETS = {
    "output_format": set(OUTPUT_FORMATS),
    "on_insufficient": set(ON_INSUFFICIENT_CHOICES),
    "scene": {scene.value for scene in PixelcutScene},
}

#: Template expressions that are not a param: Airflow's own run context.
RUN_CONTEXT_TEMPLATES = {"ti.map_index", "ti.xcom_pull(task_ids='check_credits') | tojson"}

#: Placeholders a doc may use in paths that are run context, not params.
RUN_CONTEXT_PLACEHOLDERS = {"dag_id", "run_id"}

SPHINX_ROLE = re.compile(r":[a-z]+(?::[a-z]+)?:`|:param\b|:return|``|\.\. [a-z-]+::")
REPOSITORY_COMMAND = re.compile(r"\bmake [a-z]|\bscripts/|\btests/|\.venv/|\bpytest\b")
TEMPLATE = re.compile(r"{{\s*(.*?)\s*}}")


@pytest.fixture(scope="module")
def dags() -> dict[str, DAG]:
    bag = DagBag(dag_folder=str(EXAMPLES))
    assert bag.import_errors == {}
    return dict(bag.dags)


def trigger_form(dag: DAG) -> dict[str, dict[str, Any]]:
    """The params as the API hands them to the trigger form: serialized, then dumped."""
    served = DagSerialization.from_dict(DagSerialization.to_dict(dag))
    return {name: dict(param.dump()) for name, param in served.params.items()}


def task_arguments(dag: DAG) -> dict[str, Any]:
    """Every task's arguments (mapped tasks: their partial arguments), by ``task_id.argument``."""
    arguments: dict[str, Any] = {}
    for task in dag.tasks:
        values = getattr(task, "partial_kwargs", None) or {f: getattr(task, f) for f in task.template_fields}
        arguments.update({f"{task.task_id}.{name}": value for name, value in values.items()})
    return arguments


def templates_in(value: Any) -> list[str]:
    """The ``{{ … }}`` expressions anywhere in a (nested) argument value."""
    if isinstance(value, str):
        return TEMPLATE.findall(value)
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list | tuple):
        return [expression for item in value for expression in templates_in(item)]
    return []


def test_every_example_dag_is_found(dags: dict[str, DAG]) -> None:
    assert set(dags) == {
        "example_bucket_remove_background",
        "example_generate_background",
        "example_credit_monitor",
        "example_credit_monitor_wait_for_topup",
        "example_process_on_arrival",
        "example_publish_cutouts",
    }


@pytest.mark.parametrize(
    "dag_id",
    [
        "example_bucket_remove_background",
        "example_generate_background",
        "example_credit_monitor_wait_for_topup",
    ],
)
def test_trigger_form_fields_are_typed_titled_and_have_real_defaults(
    dags: dict[str, DAG], dag_id: str
) -> None:
    form = trigger_form(dags[dag_id])
    assert form, dag_id
    for name, field in form.items():
        schema, value = field["schema"], field["value"]
        assert isinstance(schema.get("title"), str) and schema["title"], name
        description = field["description"]
        assert description and len(description) <= 80 and "\n" not in description, name
        assert value is not None, name
        assert isinstance(schema.get("type"), str) and schema["type"] != "null", (
            f"{name}: {schema.get('type')}"
        )
        jsonschema.validate(value, schema)
        if isinstance(value, int | float) and not isinstance(value, bool):
            assert schema["type"] in ("integer", "number") and "minimum" in schema, name
        if schema["type"] == "string":
            assert not re.fullmatch(r"-?\d+(\.\d+)?%?", str(value)), f"{name}: a number typed as text"
        if name in CLOSED_SETS:
            assert set(schema.get("enum", ())) == CLOSED_SETS[name], name
        if "enum" in schema:
            assert set(schema.get("values_display", {})) == set(schema["enum"]), name


@pytest.mark.parametrize(
    ("dag_id", "conf"),
    [
        ("example_bucket_remove_background", {"max_shards": "2"}),
        ("example_bucket_remove_background", {"max_shards": 0}),
        ("example_bucket_remove_background", {"output_format": "gif"}),
        ("example_bucket_remove_background", {"on_insufficient": "warn"}),
        ("example_bucket_remove_background", {"safety_margin_percent": -1}),
        ("example_bucket_remove_background", {"destination_prefix": ""}),
        ("example_bucket_remove_background", {"destination_prefix": "/"}),
        ("example_generate_background", {"scene": "beach"}),
        ("example_credit_monitor_wait_for_topup", {"topup_min_credits": "lots"}),
    ],
)
def test_trigger_form_rejects_values_outside_the_schema(
    dags: dict[str, DAG], dag_id: str, conf: dict
) -> None:
    [(name, value)] = conf.items()
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(value, trigger_form(dags[dag_id])[name]["schema"])


@pytest.mark.parametrize("prefix", ["", "/", "cutouts/", "cutouts", "shop/cutouts/"])
def test_remove_example_destination_prefix_takes_what_its_renditions_task_takes(
    dags: dict[str, DAG], prefix: str
) -> None:
    """The renditions read the cut-outs: a prefix they refuse is refused in the form, before any paid call."""
    form = trigger_form(dags["example_bucket_remove_background"])
    bucket, renditions_prefix = form["destination_bucket"]["value"], form["renditions_prefix"]["value"]
    try:  # what the renditions task plans over: the cut-outs in, the renditions out, one bucket
        BatchSpec(
            source_bucket=bucket,
            source_prefix=prefix,
            destination_bucket=bucket,
            destination_prefix=renditions_prefix,
        )
    except InvalidOptionError:
        task_takes = False
    else:
        task_takes = True
    form_takes = jsonschema.Draft202012Validator(form["destination_prefix"]["schema"]).is_valid(prefix)
    assert form_takes == task_takes, prefix


def test_generate_example_reads_one_cutout_format_of_the_remove_example(dags: dict[str, DAG]) -> None:
    """``a.png`` and ``a.webp`` both make ``a.jpg``: a batch of two formats would be refused whole."""
    remove = trigger_form(dags["example_bucket_remove_background"])["output_format"]
    chosen = trigger_form(dags["example_generate_background"])["cutouts_format"]
    assert chosen["value"] == remove["value"]
    assert set(chosen["schema"]["enum"]) <= set(remove["schema"]["enum"])
    includes = task_arguments(dags["example_generate_background"])
    for task_id in ("scene", "prompt"):
        assert includes[f"{task_id}.include"] == ["*.{{ params.cutouts_format }}"], task_id


@pytest.mark.parametrize(
    "dag_id",
    [
        "example_bucket_remove_background",
        "example_generate_background",
        "example_credit_monitor_wait_for_topup",
    ],
)
def test_templates_read_only_params_and_every_param_is_used(dags: dict[str, DAG], dag_id: str) -> None:
    """Literal values stay literal (validated at parse); a template is a param read at run time."""
    dag = dags[dag_id]
    used = set()
    for argument, value in task_arguments(dag).items():
        for expression in templates_in(value):
            if expression in RUN_CONTEXT_TEMPLATES:
                continue
            match = re.fullmatch(r"params\.(\w+)", expression)
            assert match, f"{argument}: {{{{ {expression} }}}} is neither a param nor run context"
            assert match[1] in dag.params, f"{argument}: no param {match[1]!r}"
            used.add(match[1])
    assert used == set(dag.params), f"params no task reads: {set(dag.params) - used}"


@pytest.mark.parametrize("path", sorted(EXAMPLES.glob("example_*.py")), ids=lambda path: path.name)
def test_examples_read_no_airflow_variables(path: Path) -> None:
    """Settings are params or literals: no ``Variable.get`` (short defaults log "Skipping masking")."""
    source = path.read_text()
    assert "Variable" not in source and "var.value" not in source and "var.json" not in source


def test_credit_monitor_thresholds_are_literal(dags: dict[str, DAG]) -> None:
    """Validated when the DAG is parsed, not when the hourly run renders them."""
    monitor = dags["example_credit_monitor"]
    assert not monitor.params
    assert monitor.get_task("check_balances").thresholds == {
        "pixelcut_default": 100,
        "pixian_default": 50,
        "poof_default": 20,
    }


def test_each_dag_has_its_own_doc(dags: dict[str, DAG]) -> None:
    docs = [dag.doc_md for dag in dags.values()]
    assert len(set(docs)) == len(docs)
    for dag_id, dag in dags.items():
        # the doc describes this DAG's tasks (in bold), and no other DAG's
        described = set(re.findall(r"\*\*(\w+)\*\*", dag.doc_md or ""))
        assert described == set(dag.task_ids), dag_id


@pytest.mark.parametrize(
    "dag_id",
    [
        "example_bucket_remove_background",
        "example_generate_background",
        "example_credit_monitor",
        "example_credit_monitor_wait_for_topup",
        "example_process_on_arrival",
        "example_publish_cutouts",
    ],
)
def test_doc_md_is_plain_markdown_for_a_dag_author(dags: dict[str, DAG], dag_id: str) -> None:
    dag = dags[dag_id]
    doc = dag.doc_md or ""
    assert doc.lstrip().startswith("### "), "starts with a heading"
    assert not SPHINX_ROLE.search(doc), SPHINX_ROLE.search(doc)
    assert not REPOSITORY_COMMAND.search(doc), REPOSITORY_COMMAND.search(doc)
    # params are named by their form titles (in italics) and by their names in paths (<name>)
    titles = {dag.params.get_param(name).schema["title"] for name in dag.params}
    for title in re.findall(r"(?<![*\w])\*(?=\S)([^*\n]+?)(?<=\S)\*(?![*\w])", doc):
        assert title in titles, f"{dag_id}: *{title}* is not the title of a param"
    for placeholder in re.findall(r"<(\w+)>", doc):
        assert placeholder in dag.params or placeholder in RUN_CONTEXT_PLACEHOLDERS, placeholder


def providers_page(description: str) -> tuple[str, list[str]]:
    """
    The description as Airflow 3.3's Providers page renders it: text and links.

    The API strips RST syntax (``_remove_rst_syntax``); the page then splits the text on spaces and
    makes each word that is a whole URL match a link, written without the space that followed it.
    """
    text = re.sub(r"\n(?:and)?", " ", _remove_rst_syntax(description))
    urls = re.findall(r"https?://[\w.-]+(?:\.?:[\w.-]+)*(?:[#/?][\w!#$%&'()*+,./:;=?@\[\]~-]*)?", text)
    rendered, links = "", []
    for word in text.split(" "):
        if word in urls:
            links.append(word)
            rendered += word
        else:
            rendered += word + " "
    return rendered.rstrip(), links


def test_provider_description_reads_well_on_the_providers_page() -> None:
    description = get_provider_info()["description"]
    rendered, links = providers_page(description)
    assert rendered == description.rstrip("."), "every character and space shown as written"
    assert links == [], "a link there swallows the space after it"
    assert "  " not in description and "\n" not in description
    old = "with `Pixelcut <https://www.pixelcut.ai/>`__, `Pixian.AI <https://pixian.ai/>`__ and Poof."
    assert providers_page(old) == (
        "with Pixelcut https://www.pixelcut.ai/,Pixian.AI https://pixian.ai/and Poof",
        ["https://www.pixelcut.ai/,", "https://pixian.ai/"],
    ), "the defect the reviewer saw (comma inside the first link, spaces lost)"
