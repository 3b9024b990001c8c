# The log store (SQLite, one writer: the log collector) and the api's read model live on one
# file system that the logs task mounts. The api reads the log store from the same directory,
# so both run as containers of one task, on one host: SQLite's locking is then local.

resource "aws_efs_file_system" "logs" {
  creation_token   = "${var.name}-logs"
  encrypted        = true
  kms_key_id       = aws_kms_key.ferry.arn
  performance_mode = "generalPurpose"
  throughput_mode  = "elastic"

  lifecycle_policy {
    transition_to_ia = "AFTER_30_DAYS"
  }

  tags = { Name = "${var.name}-logs" }
}

resource "aws_efs_backup_policy" "logs" {
  file_system_id = aws_efs_file_system.logs.id

  backup_policy {
    status = "ENABLED"
  }
}

resource "aws_efs_mount_target" "logs" {
  for_each        = toset(var.private_subnet_ids)
  file_system_id  = aws_efs_file_system.logs.id
  subnet_id       = each.value
  security_groups = [aws_security_group.efs.id]
}

# The task mounts the data directory as ferry's user; nothing else on the file system is visible.
resource "aws_efs_access_point" "logs" {
  file_system_id = aws_efs_file_system.logs.id

  posix_user {
    uid = local.ferry_uid
    gid = local.ferry_gid
  }

  root_directory {
    path = "/ferry"
    creation_info {
      owner_uid   = local.ferry_uid
      owner_gid   = local.ferry_gid
      permissions = "0700"
    }
  }
}

# Only the logs task's role may mount, only through the access point, only over TLS.
resource "aws_efs_file_system_policy" "logs" {
  file_system_id = aws_efs_file_system.logs.id
  policy         = data.aws_iam_policy_document.efs.json
}

data "aws_iam_policy_document" "efs" {
  statement {
    sid       = "LogsTaskMounts"
    actions   = ["elasticfilesystem:ClientMount", "elasticfilesystem:ClientWrite"]
    resources = [aws_efs_file_system.logs.arn]
    principals {
      type        = "AWS"
      identifiers = [aws_iam_role.task["logs"].arn]
    }
    condition {
      test     = "StringEquals"
      variable = "elasticfilesystem:AccessPointArn"
      values   = [aws_efs_access_point.logs.arn]
    }
  }

  statement {
    sid       = "TlsOnly"
    effect    = "Deny"
    actions   = ["*"]
    resources = [aws_efs_file_system.logs.arn]
    principals {
      type        = "AWS"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}
