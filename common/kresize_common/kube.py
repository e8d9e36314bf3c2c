"""Kubernetes client set-up for the API and the operator (both depend on the `kubernetes` package;
the resizer never imports this module)."""

from __future__ import annotations

import kubernetes


def kube_client() -> kubernetes.client.ApiClient:
    """In-cluster configuration when running in a pod, else KUBECONFIG / ~/.kube/config."""
    try:
        kubernetes.config.load_incluster_config()
        return kubernetes.client.ApiClient()
    except kubernetes.config.ConfigException:
        return kubernetes.config.new_client_from_config()
