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
  }
}

# ---------------------------------------------------------------------------------------------
# A job's execution role: what ECS needs to start it (image, logs, secrets named by reference).
# ---------------------------------------------------------------------------------------------

resource "aws_iam_role" "job_execution" {
  name               = "${var.name}-batch-job-execution"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
}

data "aws_iam_policy_document" "job_execution" {
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
    resources = ["${aws_cloudwatch_log_group.jobs.arn}:*"]
  }

  # Task secrets are passed as Secrets Manager references under the deployment's batch/ prefix,
  # never as plain values in a job definition.
  statement {
    sid       = "ReadTaskSecrets"
    actions   = ["secretsmanager:GetSecretValue"]
    resources = ["arn:${local.partition}:secretsmanager:${local.region}:${local.account}:secret:${var.name}/batch/*"]
  }

  statement {
    sid       = "DecryptTaskSecrets"
    actions   = ["kms:Decrypt"]
    resources = [var.kms_key_arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["secretsmanager.${local.region}.amazonaws.com"]
    }
  }
}

resource "aws_iam_role_policy" "job_execution" {
  name   = "start-job"
  role   = aws_iam_role.job_execution.id
  policy = data.aws_iam_policy_document.job_execution.json
}

# ---------------------------------------------------------------------------------------------
# A job's own role: tasks reach their staged files through presigned URLs the launcher makes, so
# it holds nothing; attach what a flow's tasks need to it.
# ---------------------------------------------------------------------------------------------

resource "aws_iam_role" "job" {
  name               = "${var.name}-batch-job"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
}

# ---------------------------------------------------------------------------------------------
# The launcher: submit, find, watch, stop and read its jobs; stage files; take events.
# ---------------------------------------------------------------------------------------------

data "aws_iam_policy_document" "launcher" {
  statement {
    sid     = "SubmitToTheQueue"
    actions = ["batch:SubmitJob", "batch:TagResource"]
    resources = [
      aws_batch_job_queue.ferry.arn,
      "arn:${local.partition}:batch:${local.region}:${local.account}:job-definition/${local.job_definition_prefix}*",
      "arn:${local.partition}:batch:${local.region}:${local.account}:job/*",
    ]
  }

  statement {
    sid     = "RegisterJobDefinitions"
    actions = ["batch:RegisterJobDefinition", "batch:TagResource"]
    resources = [
      "arn:${local.partition}:batch:${local.region}:${local.account}:job-definition/${local.job_definition_prefix}*",
    ]
  }

  statement {
    sid       = "StopJobs"
    actions   = ["batch:TerminateJob"]
    resources = ["arn:${local.partition}:batch:${local.region}:${local.account}:job/*"]
  }

  # Describe and List calls take no resource in IAM.
  statement {
    sid       = "ReadJobs"
    actions   = ["batch:DescribeJobs", "batch:ListJobs", "batch:DescribeJobDefinitions", "batch:DescribeJobQueues", "batch:DescribeComputeEnvironments"]
    resources = ["*"]
  }

  statement {
    sid       = "PassJobRoles"
    actions   = ["iam:PassRole"]
    resources = [aws_iam_role.job_execution.arn, aws_iam_role.job.arn]
  }

  statement {
    sid       = "StageFiles"
    actions   = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload"]
    resources = ["${aws_s3_bucket.staging.arn}/*"]
  }

  statement {
    sid       = "ListStaged"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.staging.arn]
  }

  statement {
    sid       = "StagingKey"
    actions   = ["kms:GenerateDataKey", "kms:Decrypt"]
    resources = [var.kms_key_arn]
    condition {
      test     = "StringEquals"
      variable = "kms:ViaService"
      values   = ["s3.${local.region}.amazonaws.com"]
    }
  }

  statement {
    sid       = "TakeEvents"
    actions   = ["sqs:ReceiveMessage", "sqs:DeleteMessage", "sqs:ChangeMessageVisibility", "sqs:GetQueueAttributes", "sqs:GetQueueUrl"]
    resources = [aws_sqs_queue.events.arn]
  }

  statement {
    sid       = "ReadJobLogs"
    actions   = ["logs:GetLogEvents", "logs:FilterLogEvents", "logs:DescribeLogStreams"]
    resources = [aws_cloudwatch_log_group.jobs.arn, "${aws_cloudwatch_log_group.jobs.arn}:*"]
  }
}

resource "aws_iam_policy" "launcher" {
  name        = "${var.name}-batch-launcher"
  description = "What ferry's aws-batch launcher needs, and nothing more"
  policy      = data.aws_iam_policy_document.launcher.json
}

# The launcher's task role when it runs on ECS beside the other services.
resource "aws_iam_role" "launcher" {
  name               = "${var.name}-batch-launcher"
  assume_role_policy = data.aws_iam_policy_document.ecs_tasks_assume.json
}

resource "aws_iam_role_policy_attachment" "launcher" {
  role       = aws_iam_role.launcher.name
  policy_arn = aws_iam_policy.launcher.arn
}
