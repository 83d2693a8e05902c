#!/usr/bin/env bash
# Checks deploy/: the Kubernetes manifests against the API schemas (kubernetes-validate, which
# bundles them, so no cluster or network is needed beyond PyPI for the install), YAML style
# (yamllint), and the nginx example's syntax (`nginx -t`, when nginx is installed).
set -euo pipefail
cd "$(dirname "$0")"
K8S_VERSION="${K8S_VERSION:-1.33.0}"
if ! command -v kubernetes-validate >/dev/null || ! command -v yamllint >/dev/null; then
    python3 -m pip install --disable-pip-version-check -q kubernetes-validate==1.37.0 yamllint==1.38.0
fi
manifests=(kubernetes/models-pvc.yaml kubernetes/deployment.yaml kubernetes/service.yaml
           kubernetes/pdb.yaml kubernetes/hpa.yaml kubernetes/ingress.yaml)
kubernetes-validate --strict -k "$K8S_VERSION" "${manifests[@]}"
yamllint -d '{extends: default, rules: {line-length: {max: 100}, document-start: disable}}' kubernetes/
if command -v nginx >/dev/null || [ -x /usr/sbin/nginx ]; then
    tmp="$(mktemp -d)"
    trap 'rm -rf "$tmp"' EXIT
    mkdir -p "$tmp/logs"
    printf 'pid %s/nginx.pid;\nerror_log %s/logs/error.log;\nevents {}\nhttp {\n  include %s;\n}\n' \
        "$tmp" "$tmp" "$PWD/nginx/fluent-ai-candle.conf" >"$tmp/nginx.conf"
    "$(command -v nginx || echo /usr/sbin/nginx)" -t -p "$tmp" -c "$tmp/nginx.conf"
else
    echo "nginx not installed: skipped the nginx -t syntax check"
fi
echo "deploy/: manifests valid against Kubernetes $K8S_VERSION"
