#!/usr/bin/env bash
# Checks the deployment files in infra/ as far as a machine without a cloud or a cluster can:
#
#   terraform fmt -check, init -backend=false and validate   infra/terraform (when terraform and
#                                                             its AWS provider are on this machine)
#   checkov --skip-download                                  infra/terraform with each example
#                                                             tfvars, infra/kubernetes
#   kubernetes-validate --strict                             every manifest, and the kustomize
#                                                             rendering when kubectl is present
#
# checkov and kubernetes-validate are installed (pinned) into the tools venv when missing, like
# scripts/services.sh's Python clients. Nothing is applied anywhere, and nothing is written into
# the checkout: terraform runs in a copy. Exit status 1 if any check failed.
set -euo pipefail
cd "$(dirname "$0")/.."

FERRY_TOOLS="${FERRY_TOOLS:-${XDG_CACHE_HOME:-$HOME/.cache}/ferry/tools}"
# Where the AWS provider is mirrored (terraform's filesystem_mirror layout); no registry is used.
FERRY_TF_PLUGINS="${FERRY_TF_PLUGINS:-/opt/tf-plugins}"
CHECKOV_VERSION=3.3.30
KUBERNETES_VALIDATE_VERSION=1.37.0

say() { printf '    %s\n' "$*"; }
failed=()
fail() {
  failed+=("$1")
  say "FAILED: $1"
}
started=$SECONDS

work=$(mktemp -d "${TMPDIR:-/tmp}/ferry-infra-check.XXXXXX")
trap 'rm -rf "$work"' EXIT

# --- tools -------------------------------------------------------------------------------------

venv="$FERRY_TOOLS/venv"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv" >/dev/null
installed() {
  local shown
  shown=$("$venv/bin/python" -m pip show "$1" 2>/dev/null) || return 1
  grep -qx "Version: $2" <<<"$shown"
}
if ! installed checkov "$CHECKOV_VERSION" || ! installed kubernetes-validate "$KUBERNETES_VALIDATE_VERSION"; then
  say "installing checkov $CHECKOV_VERSION and kubernetes-validate $KUBERNETES_VALIDATE_VERSION into $venv"
  t=$SECONDS
  "$venv/bin/pip" install -q --disable-pip-version-check \
    "checkov==$CHECKOV_VERSION" "kubernetes-validate==$KUBERNETES_VALIDATE_VERSION"
  say "installed in $((SECONDS - t)) s"
fi
checkov="$venv/bin/checkov"
kubernetes_validate="$venv/bin/kubernetes-validate"

# checkov is the slow part: its runs go side by side, in the background, while the rest runs.
# --skip-download keeps it offline; every check that fails must be fixed or skipped next to the
# resource with its reason (checkov:skip comments in .tf, checkov.io/skip annotations in YAML).
checkov_run() {
  local name=$1
  shift
  (
    rc=0
    "$checkov" --skip-download --quiet --compact -o cli "$@" >"$work/checkov-$name.log" 2>&1 || rc=$?
    echo "$rc" >"$work/checkov-$name.rc"
  ) &
}
for vars in infra/terraform/examples/*.tfvars; do
  checkov_run "terraform-$(basename "$vars" .tfvars)" -d infra/terraform --framework terraform --var-file "$vars"
done
checkov_run kubernetes -d infra/kubernetes --framework kubernetes

# --- terraform ---------------------------------------------------------------------------------

provider_dir="$FERRY_TF_PLUGINS/registry.terraform.io/hashicorp/aws"
if ! command -v terraform >/dev/null; then
  say "SKIPPED terraform fmt/validate: terraform is not installed on this machine"
elif [ ! -d "$provider_dir" ]; then
  say "SKIPPED terraform init/validate: no AWS provider mirrored at $provider_dir (set FERRY_TF_PLUGINS)"
  say "terraform fmt -check -recursive infra/terraform"
  terraform fmt -check -recursive infra/terraform || fail "terraform fmt (run: terraform fmt -recursive infra/terraform)"
else
  cat >"$work/terraform.rc" <<EOF
provider_installation {
  filesystem_mirror {
    path    = "$FERRY_TF_PLUGINS"
    include = ["registry.terraform.io/hashicorp/aws"]
  }
  direct {
    exclude = ["registry.terraform.io/hashicorp/aws"]
  }
}
EOF
  export TF_CLI_CONFIG_FILE="$work/terraform.rc" CHECKPOINT_DISABLE=1 TF_IN_AUTOMATION=1
  say "$(terraform version | head -1), AWS provider from $provider_dir"
  say "terraform fmt -check -recursive infra/terraform"
  terraform fmt -check -recursive infra/terraform || fail "terraform fmt (run: terraform fmt -recursive infra/terraform)"
  cp -r infra/terraform "$work/terraform"
  rm -rf "$work/terraform/.terraform" "$work/terraform/.terraform.lock.hcl"
  say "terraform init -backend=false && terraform validate"
  if terraform -chdir="$work/terraform" init -backend=false -input=false -no-color >"$work/init.log" 2>&1; then
    terraform -chdir="$work/terraform" validate -no-color | sed 's/^/    /' || fail "terraform validate"
  else
    sed 's/^/    /' "$work/init.log"
    fail "terraform init"
  fi
fi

# --- Kubernetes schemas ------------------------------------------------------------------------

manifests=()
for f in infra/kubernetes/*.yaml; do
  [ "$(basename "$f")" = kustomization.yaml ] || manifests+=("$f")
done
say "kubernetes-validate --strict: ${#manifests[@]} manifests"
"$kubernetes_validate" --strict --quiet "${manifests[@]}" || fail "kubernetes-validate --strict infra/kubernetes"
if command -v kubectl >/dev/null; then
  say "kubectl kustomize infra/kubernetes, then kubernetes-validate --strict on the result"
  if kubectl kustomize infra/kubernetes >"$work/rendered.yaml"; then
    "$kubernetes_validate" --strict --quiet "$work/rendered.yaml" || fail "kubernetes-validate --strict on the kustomize rendering"
  else
    fail "kubectl kustomize infra/kubernetes"
  fi
else
  say "SKIPPED the kustomize rendering: kubectl is not installed on this machine"
fi

# --- checkov results ---------------------------------------------------------------------------

wait
for log in "$work"/checkov-*.log; do
  name=$(basename "$log" .log)
  summary=$(grep -m1 -E '^Passed checks' "$log" || true)
  if [ "$(cat "$work/$name.rc" 2>/dev/null)" = 0 ]; then
    say "checkov ${name#checkov-}: ${summary:-no resources}"
  else
    sed 's/^/    /' "$log"
    fail "checkov ${name#checkov-}"
  fi
done

if [ ${#failed[@]} -gt 0 ]; then
  say "infra checks failed after $((SECONDS - started)) s: ${failed[*]}"
  exit 1
fi
say "infra checks passed in $((SECONDS - started)) s"
