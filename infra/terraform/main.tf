data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}
data "aws_region" "current" {}

locals {
  account   = data.aws_caller_identity.current.account_id
  partition = data.aws_partition.current.partition
  region    = data.aws_region.current.name

  # Where each service's container finds what it needs.
  data_dir     = "/var/lib/ferry"
  secrets_dir  = "/run/ferry"
  bus_key_file = "${local.secrets_dir}/bus.keys"
  tokens_file  = "${local.secrets_dir}/tokens.yaml"
  api_port     = 8080
  ferry_uid    = split(":", var.ferry_user)[0]
  ferry_gid    = split(":", var.ferry_user)[1]
}

# One customer-managed key for everything ferry stores: secrets, logs, the database, the broker
# and the file system. Services decrypt only through the secrets their execution roles may read.
resource "aws_kms_key" "ferry" {
  description             = "${var.name}: secrets, logs, database, broker and file system"
  enable_key_rotation     = true
  deletion_window_in_days = 30
  policy                  = data.aws_iam_policy_document.kms.json
}

resource "aws_kms_alias" "ferry" {
  name          = "alias/${var.name}"
  target_key_id = aws_kms_key.ferry.key_id
}

data "aws_iam_policy_document" "kms" {
  # checkov:skip=CKV_AWS_109:A key policy's resource is always the key itself ("*" means this key).
  # checkov:skip=CKV_AWS_111:A key policy's resource is always the key itself ("*" means this key).
  # checkov:skip=CKV_AWS_356:A key policy's resource is always the key itself ("*" means this key).
  statement {
    sid       = "AccountAdministers"
    actions   = ["kms:*"]
    resources = ["*"]
    principals {
      type        = "AWS"
      identifiers = ["arn:${local.partition}:iam::${local.account}:root"]
    }
  }

  statement {
    sid       = "CloudWatchLogsEncrypts"
    actions   = ["kms:Encrypt*", "kms:Decrypt*", "kms:ReEncrypt*", "kms:GenerateDataKey*", "kms:Describe*"]
    resources = ["*"]
    principals {
      type        = "Service"
      identifiers = ["logs.${local.region}.amazonaws.com"]
    }
    condition {
      test     = "ArnLike"
      variable = "kms:EncryptionContext:aws:logs:arn"
      values   = ["arn:${local.partition}:logs:${local.region}:${local.account}:log-group:*"]
    }
  }
}
