"""KubeRay manifests parse and use only fields of the ray.io/v1 RayCluster / RayJob CRDs (KubeRay v1.x)."""

import glob
import os
import tomllib

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MANIFESTS = sorted(glob.glob(os.path.join(ROOT, "cluster", "kuberay", "*.yaml")))

# Field names of the KubeRay v1 CRDs (ray.io_rayclusters.yaml / ray.io_rayjobs.yaml, spec level).
RAYCLUSTER_SPEC = {"rayVersion", "enableInTreeAutoscaling", "autoscalerOptions", "headGroupSpec", "workerGroupSpecs",
                   "headServiceAnnotations", "suspend", "managedBy", "gcsFaultToleranceOptions", "upgradeStrategy"}
AUTOSCALER_OPTIONS = {"upscalingMode", "idleTimeoutSeconds", "resources", "image", "imagePullPolicy", "env",
                      "envFrom", "securityContext", "volumeMounts", "version"}
HEAD_GROUP = {"serviceType", "headService", "enableIngress", "rayStartParams", "template"}
WORKER_GROUP = {"groupName", "replicas", "minReplicas", "maxReplicas", "rayStartParams", "template", "scaleStrategy",
                "numOfHosts", "idleTimeoutSeconds", "suspend"}
RAYJOB_SPEC = {"entrypoint", "runtimeEnvYAML", "jobId", "shutdownAfterJobFinishes", "ttlSecondsAfterFinished",
               "activeDeadlineSeconds", "rayClusterSpec", "clusterSelector", "submissionMode", "submitterPodTemplate",
               "entrypointNumCpus", "entrypointNumGpus", "entrypointResources", "suspend", "backoffLimit", "metadata",
               "managedBy", "deletionStrategy", "submitterConfig"}


def _load(path):
    return yaml.safe_load(open(path))


@pytest.mark.parametrize("path", MANIFESTS)
def test_manifest_fields_are_in_the_crd(path):
    doc = _load(path)
    assert doc["apiVersion"] == "ray.io/v1" and doc["metadata"]["name"]
    spec = doc["spec"]
    if doc["kind"] == "RayCluster":
        assert set(spec) <= RAYCLUSTER_SPEC, set(spec) - RAYCLUSTER_SPEC
        assert set(spec["autoscalerOptions"]) <= AUTOSCALER_OPTIONS
        assert set(spec["headGroupSpec"]) <= HEAD_GROUP
        assert spec["headGroupSpec"]["serviceType"] == "ClusterIP"  # dashboard never public
        assert spec["headGroupSpec"]["rayStartParams"]["num-cpus"] == "0"
        for g in spec["workerGroupSpecs"]:
            assert set(g) <= WORKER_GROUP, set(g) - WORKER_GROUP
            assert g["minReplicas"] <= g["maxReplicas"] and g["template"]["spec"]["containers"]
            assert all(isinstance(v, str) for v in g["rayStartParams"].values())
        pins = tomllib.load(open(os.path.join(ROOT, "pyproject.toml"), "rb"))["project"]["dependencies"]
        assert f"ray[default,train,data]=={spec['rayVersion']}" in pins
        assert spec["enableInTreeAutoscaling"] is True
    else:
        assert doc["kind"] == "RayJob"
        assert set(spec) <= RAYJOB_SPEC, set(spec) - RAYJOB_SPEC
        assert spec["entrypoint"].startswith("python jobs/")
        assert spec["clusterSelector"]["ray.io/cluster"] == _load(MANIFESTS[0] if "raycluster" in MANIFESTS[0]
                                                                  else path)["metadata"]["name"]
        yaml.safe_load(spec["runtimeEnvYAML"])


def test_a_wrong_field_is_caught():
    doc = _load([m for m in MANIFESTS if m.endswith("raycluster.yaml")][0])
    assert "workerGroupSpec" not in RAYCLUSTER_SPEC  # the singular typo users make
    doc["spec"]["workerGroupSpec"] = []
    assert not set(doc["spec"]) <= RAYCLUSTER_SPEC


def test_every_job_has_a_manifest():
    names = {os.path.basename(m) for m in MANIFESTS}
    assert {"raycluster.yaml", "rayjob-dataprep.yaml", "rayjob-stage1.yaml", "rayjob-stage2.yaml"} <= names
