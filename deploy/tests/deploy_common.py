"""What test_deploy.py and render_plain.py share: where things are, and how
the chart is rendered (Helm's Go SDK through helm-python-sdk: the real
template engine, never a look-alike)."""

from pathlib import Path

import helm_python as helm
import yaml

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "deploy" / "helm" / "bulkhead"
PLAIN = ROOT / "deploy" / "kubernetes"
SECRET_TEMPLATE = PLAIN / "templates" / "secret.yaml"
DOCKERFILE = ROOT / "deploy" / "Dockerfile"
RELEASE = "bulkhead"
NAMESPACE = "bulkhead"
# deploy/kubernetes/ is the chart with these values (the rest default).
PLAIN_VALUES = {"namespace": {"create": True}}
PLAIN_HEADER = (
    "# Generated from deploy/helm/bulkhead (default values, namespace.create=true,\n"
    "# release and namespace `bulkhead`) by deploy/tests/render_plain.py; CI checks\n"
    "# it is current. Edit the chart, then run the script.\n"
)


def render_texts(values=None):
    """Template path -> rendered text."""
    with helm.Chart.load(str(CHART)) as chart:
        return chart.render(values or {}, name=RELEASE, namespace=NAMESPACE)


def documents(text):
    """The objects in a YAML stream (empty documents left out)."""
    return [doc for doc in yaml.safe_load_all(text) if doc]


def render(values=None):
    """Every object the chart renders with `values`."""
    objects = []
    for _, text in sorted(render_texts(values).items()):
        objects.extend(documents(text))
    return objects


def plain_file_name(template):
    """deploy/kubernetes/ file for a template: the namespace first, so
    `kubectl apply -f deploy/kubernetes/` creates it before the rest."""
    name = Path(template).name
    return "00-namespace.yaml" if name == "namespace.yaml" else name


def plain():
    """Every object in deploy/kubernetes/*.yaml (not templates/)."""
    objects = []
    for path in sorted(PLAIN.glob("*.yaml")):
        objects.extend(documents(path.read_text()))
    return objects
