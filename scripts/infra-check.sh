#!/usr/bin/env bash
# Checks the deployment files in infra/ as far as a machine without a cloud or a cluster can:
#
#   terraform fmt -check, init -backend=false and validate   infra/terraform (when terraform and
#                                                             its AWS provider are on this machine;
#                                                             fmt covers modules/google-batch too)
#   terraform apply, then destroy, against moto              modules/batch, called from
#                                                             infra/terraform/tests/moto (when
#                                                             FERRY_TEST_MOTO is set, as in
#                                                             scripts/test.sh), checked through
#                                                             moto's APIs by tests/moto/verify.py
#   checkov --skip-download                                  infra/terraform with each example
#                                                             tfvars, modules/google-batch,
#                                                             infra/kubernetes
#   kubernetes-validate --strict                             every manifest, and the kustomize
#                                                             rendering when kubectl is present
#
# checkov and kubernetes-validate are installed (pinned) into the tools venv when missing, like
# scripts/services.sh's Python clients. Nothing is applied anywhere but to the moto server named by
# FERRY_TEST_MOTO (a local fake of the AWS APIs; nothing reaches AWS), and nothing is written into
# the checkout: terraform runs in copies. Exit status 1 if any check failed.
#
# modules/google-batch (for the google-batch launcher) is only formatted and scanned: the Google
# provider is not mirrored here and no registry is used, so it cannot be initialized or
# validated, and nothing emulates the Batch, IAM, Cloud Storage and Pub/Sub APIs to apply it to.
#
# The apply against moto by hand (it adds about 3 minutes, mostly the AWS provider's own waits for
# the job queue and the SQS and S3 settings):
#   source scripts/services.sh && moto_tools      # installs moto once, exports FERRY_TEST_MOTO_BIN
#   $FERRY_TEST_MOTO_BIN -H 127.0.0.1 -p 5055 & moto=$!
#   FERRY_TEST_MOTO=http://127.0.0.1:5055 scripts/infra-check.sh; kill $moto
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
# infra/terraform/tests holds configurations for this script, not deployments (moto's VPC has no
# flow logs, its KMS key no policy): --skip-path keeps them out of the scan rather than skipping
# checks in them one by one, and modules/batch is still scanned through batch.tf.
# modules/google-batch is called by no configuration here and takes none of the AWS tfvars: it is
# scanned once, on its own, rather than again with each tfvars.
for vars in infra/terraform/examples/*.tfvars; do
  checkov_run "terraform-$(basename "$vars" .tfvars)" -d infra/terraform --framework terraform --var-file "$vars" \
    --skip-path infra/terraform/tests --skip-path infra/terraform/modules/google-batch
done
checkov_run google -d infra/terraform/modules/google-batch --framework terraform
checkov_run kubernetes -d infra/kubernetes --framework kubernetes

# --- terraform ---------------------------------------------------------------------------------

# The lines of a terraform log that say what went wrong: its errors, or its end when it has none
# (killed by timeout).
tf_errors() {
  if grep -q '^Error: ' "$1"; then sed -n '/^Error: /,$p' "$1"; else tail -n 20 "$1"; fi | sed 's/^/    /'
}

# Applies modules/batch, as a deployment calls it (infra/terraform/tests/moto/main.tf, with a VPC,
# subnets and a KMS key of its own), to the moto server at FERRY_TEST_MOTO; checks through moto's
# APIs that the aws-batch launcher's resources are there and that a job state event reaches the
# events queue; destroys it all and checks that nothing is left. Each terraform step is bounded by
# timeout; the destroy runs after a failed apply too, to remove what was created.
batch_against_moto() {
  local dir="$work/moto" name="ferry-check-$$" t=$SECONDS rc python= limit=600
  local tf=(timeout -k 30 "$limit" terraform -chdir="$dir/tests/moto")
  local vars=(-input=false -no-color -var "endpoint=$FERRY_TEST_MOTO" -var "name=$name")
  # boto3 for verify.py: moto's own venv when scripts/services.sh installed it, else checkov's.
  for python in ${FERRY_TEST_MOTO_BIN:+"$(dirname "$FERRY_TEST_MOTO_BIN")/python"} "$venv/bin/python"; do
    "$python" -c 'import boto3' 2>/dev/null && break
    python=
  done
  local address=${FERRY_TEST_MOTO#*://}
  address=${address%%/*}
  if ! (exec 3<>"/dev/tcp/${address%:*}/${address##*:}") 2>/dev/null; then
    fail "nothing answers at FERRY_TEST_MOTO=$FERRY_TEST_MOTO (start moto there, or unset it to skip the apply)"
    return
  fi
  mkdir -p "$dir/tests"
  cp -r infra/terraform/modules "$dir/modules"
  cp -r infra/terraform/tests/moto "$dir/tests/moto"
  rm -rf "$dir"/tests/moto/.terraform* "$dir"/tests/moto/terraform.tfstate*
  say "terraform apply of modules/batch against moto at $FERRY_TEST_MOTO (infra/terraform/tests/moto, name $name)"
  if ! "${tf[@]}" init -input=false -no-color >"$work/moto-init.log" 2>&1; then
    tf_errors "$work/moto-init.log"
    fail "terraform init of infra/terraform/tests/moto"
    return
  fi
  rc=0
  "${tf[@]}" apply -auto-approve "${vars[@]}" >"$work/moto-apply.log" 2>&1 || rc=$?
  if [ "$rc" != 0 ]; then
    tf_errors "$work/moto-apply.log"
    [ "$rc" = 124 ] && say "(timed out after $limit s)"
    fail "terraform apply of modules/batch against moto (the error above names the resource: fix modules/batch if AWS would refuse it too, infra/terraform/tests/moto/main.tf if only moto wants something else)"
  elif [ -z "$python" ]; then
    fail "no Python with boto3 to check the applied resources (source scripts/services.sh && moto_tools, and export FERRY_TEST_MOTO_BIN)"
  else
    say "applied in $((SECONDS - t)) s; checking it through moto"
    if ! "${tf[@]}" output -json batch >"$work/moto-outputs.json" 2>"$work/moto-output.log"; then
      sed 's/^/    /' "$work/moto-output.log"
      fail "terraform output batch (infra/terraform/tests/moto/main.tf must output module.batch)"
    elif ! "$python" "$dir/tests/moto/verify.py" applied "$FERRY_TEST_MOTO" "$name" "$work/moto-outputs.json"; then
      fail "modules/batch applied against moto is not what the aws-batch launcher needs (the FAILED lines above)"
    fi
  fi
  t=$SECONDS
  say "terraform destroy"
  rc=0
  "${tf[@]}" destroy -auto-approve "${vars[@]}" >"$work/moto-destroy.log" 2>&1 || rc=$?
  if [ "$rc" != 0 ]; then
    tf_errors "$work/moto-destroy.log"
    [ "$rc" = 124 ] && say "(timed out after $limit s)"
    fail "terraform destroy of modules/batch against moto (resources of $name are left in moto)"
  elif [ -n "$("${tf[@]}" state list 2>&1)" ]; then
    "${tf[@]}" state list 2>&1 | sed 's/^/    /'
    fail "terraform destroy of modules/batch against moto left these in its state"
  elif [ -n "$python" ] && ! "$python" "$dir/tests/moto/verify.py" destroyed "$FERRY_TEST_MOTO" "$name"; then
    fail "terraform destroy of modules/batch left resources in moto (listed above)"
  else
    say "destroyed in $((SECONDS - t)) s"
  fi
}

provider_dir="$FERRY_TF_PLUGINS/registry.terraform.io/hashicorp/aws"
if ! command -v terraform >/dev/null; then
  say "SKIPPED terraform fmt/validate and the apply against moto: terraform is not installed on this machine"
elif [ ! -d "$provider_dir" ]; then
  say "SKIPPED terraform init/validate and the apply against moto: no AWS provider mirrored at $provider_dir (set FERRY_TF_PLUGINS)"
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
  if [ -n "${FERRY_TEST_MOTO:-}" ]; then
    batch_against_moto
  else
    say "SKIPPED terraform apply/destroy of modules/batch against moto: FERRY_TEST_MOTO is not set" \
      "(scripts/test.sh sets it; by hand see the top of $0)"
  fi
fi
say "SKIPPED terraform init/validate and any apply of modules/google-batch: no Google provider on this" \
  "machine and nothing emulating Google's APIs (fmt and checkov are all it gets)"

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
