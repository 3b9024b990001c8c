# What ferry's aws-batch launcher uses: a Fargate compute environment and a job queue, a bucket
# where each attempt's input files and outputs are staged, "Batch Job State Change" events
# delivered to an SQS queue (a hint; DescribeJobs is the truth), a log group for the jobs, the
# roles a job runs with, and the launcher's own least-privilege policy and role.

data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}
data "aws_region" "current" {}

locals {
  account   = data.aws_caller_identity.current.account_id
  partition = data.aws_partition.current.partition
  region    = data.aws_region.current.name
  # Job definitions the launcher registers are named from a hash of image and resources, under
  # this prefix.
  job_definition_prefix = "${var.name}-"
}

# ---------------------------------------------------------------------------------------------
# Compute
# ---------------------------------------------------------------------------------------------

resource "aws_security_group" "jobs" {
  name        = "${var.name}-batch-jobs"
  description = "ferry AWS Batch jobs: no inbound; HTTPS out for images, S3 and logs"
  vpc_id      = var.vpc_id
}

resource "aws_vpc_security_group_egress_rule" "jobs_https" {
  security_group_id = aws_security_group.jobs.id
  description       = "HTTPS to AWS endpoints and image registries"
  ip_protocol       = "tcp"
  from_port         = 443
  to_port           = 443
  cidr_ipv4         = "0.0.0.0/0"
}

# Without service_role, AWS Batch uses its service-linked role.
resource "aws_batch_compute_environment" "fargate" {
  compute_environment_name_prefix = "${var.name}-"
  type                            = "MANAGED"
  service_role                    = var.service_role_arn

  compute_resources {
    type               = var.use_spot ? "FARGATE_SPOT" : "FARGATE"
    max_vcpus          = var.max_vcpus
    subnets            = var.subnet_ids
    security_group_ids = [aws_security_group.jobs.id]
  }

  lifecycle {
    create_before_destroy = true
  }
}

resource "aws_batch_job_queue" "ferry" {
  name     = var.name
  state    = "ENABLED"
  priority = 1

  compute_environment_order {
    order               = 1
    compute_environment = aws_batch_compute_environment.fargate.arn
  }
}

# ---------------------------------------------------------------------------------------------
# Staging bucket
# ---------------------------------------------------------------------------------------------

resource "aws_s3_bucket" "staging" {
  # checkov:skip=CKV_AWS_144:Staged files live for one attempt; replicating them to another region would only copy data that is deleted on release.
  # checkov:skip=CKV2_AWS_62:Nothing reacts to staged objects: the launcher writes and reads them itself.
  # checkov:skip=CKV_AWS_18:Every access is the launcher's or a job's, recorded by CloudTrail data events where the account enables them; server access logs would need a second bucket per deployment.
  bucket_prefix = "${var.name}-staging-"
}

resource "aws_s3_bucket_public_access_block" "staging" {
  bucket                  = aws_s3_bucket.staging.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "staging" {
  bucket = aws_s3_bucket.staging.id
  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_versioning" "staging" {
  bucket = aws_s3_bucket.staging.id
  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "staging" {
  bucket = aws_s3_bucket.staging.id
  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = "aws:kms"
      kms_master_key_id = var.kms_key_arn
    }
    bucket_key_enabled = true
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "staging" {
  bucket = aws_s3_bucket.staging.id

  rule {
    id     = "expire-staged-files"
    status = "Enabled"
    filter {}
    expiration {
      days = var.staging_expiry_days
    }
    noncurrent_version_expiration {
      noncurrent_days = 1
    }
    abort_incomplete_multipart_upload {
      days_after_initiation = 1
    }
  }
}

resource "aws_s3_bucket_policy" "staging" {
  bucket = aws_s3_bucket.staging.id
  policy = data.aws_iam_policy_document.staging.json
}

data "aws_iam_policy_document" "staging" {
  statement {
    sid       = "TlsOnly"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [aws_s3_bucket.staging.arn, "${aws_s3_bucket.staging.arn}/*"]
    principals {
      type        = "*"
      identifiers = ["*"]
    }
    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

# ---------------------------------------------------------------------------------------------
# Job state events: EventBridge → SQS
# ---------------------------------------------------------------------------------------------

resource "aws_sqs_queue" "events" {
  name                       = "${var.name}-batch-events"
  sqs_managed_sse_enabled    = true
  message_retention_seconds  = 345600
  visibility_timeout_seconds = 60
}

resource "aws_cloudwatch_event_rule" "job_state" {
  name        = "${var.name}-batch-job-state"
  description = "ferry: state changes of jobs in the ${var.name} job queue"
  event_pattern = jsonencode({
    source        = ["aws.batch"]
    "detail-type" = ["Batch Job State Change"]
    detail        = { jobQueue = [aws_batch_job_queue.ferry.arn] }
  })
}

resource "aws_cloudwatch_event_target" "job_state" {
  rule = aws_cloudwatch_event_rule.job_state.name
  arn  = aws_sqs_queue.events.arn
}

resource "aws_sqs_queue_policy" "events" {
  queue_url = aws_sqs_queue.events.id
  policy    = data.aws_iam_policy_document.events_queue.json
}

data "aws_iam_policy_document" "events_queue" {
  statement {
    sid       = "EventBridgeDelivers"
    actions   = ["sqs:SendMessage"]
    resources = [aws_sqs_queue.events.arn]
    principals {
      type        = "Service"
      identifiers = ["events.amazonaws.com"]
    }
    condition {
      test     = "ArnEquals"
      variable = "aws:SourceArn"
      values   = [aws_cloudwatch_event_rule.job_state.arn]
    }
  }
}

# ---------------------------------------------------------------------------------------------
# Logs
# ---------------------------------------------------------------------------------------------

resource "aws_cloudwatch_log_group" "jobs" {
  name              = "/${var.name}/batch-jobs"
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn
}
