# Two roles per service. The execution role is ECS's, to start the task: pull the image, write
# its logs and read the secrets that service needs, nothing else. The task role is the service's
# own: ferry's services call no AWS API, so it holds nothing but, for the logs task, the right to
# mount its file system. (The aws-batch launcher's rights are in modules/batch.)

locals {
  ecs_services = toset(["planner", "scheduler", "launcher", "logs"])
  # The log groups each task writes to.
  service_log_groups = {
    planner   = ["planner", "init"]
    scheduler = ["scheduler", "init"]
    launcher  = ["launcher", "init"]
    logs      = ["log-collector", "api", "init"]
  }
}

data "aws_iam_policy_document" "ecs_tasks_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }
    condition {
      test     = "StringEquals"
      variable = "aws:SourceAccount"
      values   = [local.account]
    }
    condition {
      test     = "ArnLike"
      variable = "aws:SourceArn"
      values   = ["arn:${local.partition}:ecs:${local.region}:${local.account}:*"]
    }
  }
}

resource "aws_iam_role" "execution" {
  for_each           = local.ecs_services
  name               = "${var.name}-${each.key}-execution"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
}

data "aws_iam_policy_document" "execution" {
  for_each = local.ecs_services

  # GetAuthorizationToken has no resource to scope to.
  statement {
    sid       = "RegistryLogin"
    actions   = ["ecr:GetAuthorizationToken"]
    resources = ["*"]
  }

  statement {
    sid       = "PullImages"
    actions   = ["ecr:BatchCheckLayerAvailability", "ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer"]
    resources = ["arn:${local.partition}:ecr:${local.region}:${local.account}:repository/*"]
  }

  statement {
    sid       = "WriteLogs"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = [for g in local.service_log_groups[each.key] : "${aws_cloudwatch_log_group.service[g].arn}:*"]
  }

  statement {
    sid       = "ReadSecrets"
    actions   = ["secretsmanager:GetSecretValue"]
    resources = concat(local.service_secrets[each.key], local.bus_url_secret)
  }

  statement {
    sid       = "DecryptSecrets"
    actions   = ["kms:Decrypt"]
    resources = [aws_kms_key.ferry.arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["secretsmanager.${local.region}.amazonaws.com"]
    }
  }
}

resource "aws_iam_role_policy" "execution" {
  for_each = local.ecs_services
  name     = "start-task"
  role     = aws_iam_role.execution[each.key].id
  policy   = data.aws_iam_policy_document.execution[each.key].json
}

resource "aws_iam_role" "task" {
  for_each           = local.ecs_services
  name               = "${var.name}-${each.key}-task"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
}

data "aws_iam_policy_document" "logs_task" {
  statement {
    sid       = "MountLogStore"
    actions   = ["elasticfilesystem:ClientMount", "elasticfilesystem:ClientWrite"]
    resources = [aws_efs_file_system.logs.arn]
    condition {
      test     = "StringEquals"
      variable = "elasticfilesystem:AccessPointArn"
      values   = [aws_efs_access_point.logs.arn]
    }
  }
}

resource "aws_iam_role_policy" "logs_task" {
  name   = "mount-log-store"
  role   = aws_iam_role.task["logs"].id
  policy = data.aws_iam_policy_document.logs_task.json
}
