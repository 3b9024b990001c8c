# What ferry's google-batch launcher uses on Google Cloud: the APIs, a staging bucket that Batch
# mounts into each job (Cloud Storage FUSE) under a prefix per attempt, a service account for the
# jobs' VMs and one for the launcher, each with only its own roles (iam.tf), and a Pub/Sub topic
# and subscription for job state notifications (hints: the Batch API stays the truth). The jobs'
# logs are Cloud Logging's batch_task_logs, which needs nothing created.

data "google_project" "this" {
  project_id = var.project
}

locals {
  bucket_name = coalesce(var.bucket_name, "${var.name_prefix}-staging-${var.project}")
  labels      = merge({ application = "ferry" }, var.labels)
  services = toset([
    "batch.googleapis.com",
    "compute.googleapis.com", # the jobs' VMs
    "iam.googleapis.com",
    "logging.googleapis.com",
    "pubsub.googleapis.com",
    "storage.googleapis.com",
  ])
}

# Other deployments in the project may use these APIs too: destroying this module must not turn
# them off.
resource "google_project_service" "enabled" {
  for_each = local.services

  project            = var.project
  service            = each.value
  disable_on_destroy = false
}

# ---------------------------------------------------------------------------------------------
# Staging bucket
# ---------------------------------------------------------------------------------------------

resource "google_storage_bucket" "staging" {
  # checkov:skip=CKV_GCP_78:Staged files live for one attempt and include secrets.sh, which the job deletes once read: a noncurrent version would keep that secret readable, and nothing staged is ever restored.
  # checkov:skip=CKV_GCP_62:Usage logs are optional (access_log_bucket): every reader and writer is the launcher or a job's service account, and Cloud Audit Logs' data access logs record them where the project enables those.
  project                     = var.project
  name                        = local.bucket_name
  location                    = var.region
  storage_class               = "STANDARD"
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = var.force_destroy
  labels                      = local.labels

  versioning {
    enabled = false
  }

  # Soft delete (7 days by default) would keep every deleted object restorable and billed, the
  # deleted secrets.sh of each attempt among them.
  soft_delete_policy {
    retention_duration_seconds = 0
  }

  # The launcher removes an attempt's prefix when the attempt ends; this removes what a launcher
  # that crashed in between left behind.
  lifecycle_rule {
    condition {
      age = var.staging_expiry_days
    }
    action {
      type = "Delete"
    }
  }

  dynamic "encryption" {
    for_each = var.kms_key_name == null ? [] : [var.kms_key_name]
    content {
      default_kms_key_name = encryption.value
    }
  }

  dynamic "logging" {
    for_each = var.access_log_bucket == null ? [] : [var.access_log_bucket]
    content {
      log_bucket        = logging.value
      log_object_prefix = local.bucket_name
    }
  }

  depends_on = [google_project_service.enabled]
}

# ---------------------------------------------------------------------------------------------
# Job state notifications: Batch → Pub/Sub → the launcher
# ---------------------------------------------------------------------------------------------

# Jobs name this topic in their notifications (JOB_STATE_CHANGED); the messages carry job names
# and states, no task data.
resource "google_pubsub_topic" "job_state" {
  project      = var.project
  name         = "${var.name_prefix}-batch-job-state"
  kms_key_name = var.topic_kms_key_name
  labels       = local.labels

  depends_on = [google_project_service.enabled]
}

resource "google_pubsub_subscription" "launcher" {
  project = var.project
  name    = "${var.name_prefix}-batch-launcher"
  topic   = google_pubsub_topic.job_state.id
  labels  = local.labels

  # Acking a notification after reading the job's state it names takes one jobs.get, well within
  # 30 s. A notification older than a day is of no use: the launcher polls every job in flight.
  ack_deadline_seconds       = 30
  message_retention_duration = "86400s"

  # Pub/Sub deletes a subscription nobody pulled from for 31 days; a deployment idle for a month
  # must still find it.
  expiration_policy {
    ttl = ""
  }
}
