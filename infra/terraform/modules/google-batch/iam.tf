# No service account keys are created: a key is a long-lived secret that would have to be stored,
# rotated and revoked. The jobs' VMs get their service account's tokens from the metadata
# server; the launcher gets its own through Workload Identity on GKE, or the metadata server on
# Compute Engine and Cloud Run.

locals {
  jobs_project_roles = toset(concat(
    [
      "roles/batch.agentReporter", # the Batch agent on each VM reports the VM's and tasks' state
      "roles/logging.logWriter",   # the tasks' output, as batch_task_logs
    ],
    var.grant_image_reader ? ["roles/artifactregistry.reader"] : [],
  ))

  launcher_project_roles = toset([
    # Create, get, list, cancel and delete jobs. Batch grants these only per project.
    "roles/batch.jobsEditor",
    # Read batch_task_logs. Cloud Logging has no predefined role narrower than the project's
    # logs; a custom log view would be, and can replace this by hand.
    "roles/logging.viewer",
  ])

  launcher_email = var.launcher_service_account_email != null ? var.launcher_service_account_email : one(google_service_account.launcher[*].email)
  batch_agent    = "service-${data.google_project.this.number}@gcp-sa-cloudbatch.iam.gserviceaccount.com"
}

# ---------------------------------------------------------------------------------------------
# The jobs' VMs: report to Batch, write logs, pull images, reach their attempt's staged files.
# ---------------------------------------------------------------------------------------------

resource "google_service_account" "jobs" {
  project      = var.project
  account_id   = "${var.name_prefix}-batch-jobs"
  display_name = "ferry Batch jobs"
  description  = "Runs the VMs of ferry's google-batch jobs; add what a flow's tasks need."

  depends_on = [google_project_service.enabled]
}

resource "google_project_iam_member" "jobs" {
  for_each = local.jobs_project_roles

  project = var.project
  role    = each.value
  member  = "serviceAccount:${google_service_account.jobs.email}"
}

# The volume Batch mounts is the attempt's prefix, but IAM on Cloud Storage stops at the bucket:
# a job can reach other attempts' prefixes in this bucket, never another bucket.
resource "google_storage_bucket_iam_member" "jobs_staging" {
  bucket = google_storage_bucket.staging.name
  role   = "roles/storage.objectAdmin"
  member = "serviceAccount:${google_service_account.jobs.email}"
}

# Google's Batch documentation asks for the job's service account to publish a job's
# notifications to a topic in its own project. A task could publish to it too; the launcher
# treats notifications as hints and reads the job's state from Batch.
resource "google_pubsub_topic_iam_member" "jobs_publish" {
  project = var.project
  topic   = google_pubsub_topic.job_state.name
  role    = "roles/pubsub.publisher"
  member  = "serviceAccount:${google_service_account.jobs.email}"
}

# ---------------------------------------------------------------------------------------------
# The Batch service agent publishes notifications of jobs whose project is not the topic's.
# ---------------------------------------------------------------------------------------------

resource "google_pubsub_topic_iam_member" "batch_agent_publish" {
  count = var.grant_batch_service_agent ? 1 : 0

  project = var.project
  topic   = google_pubsub_topic.job_state.name
  role    = "roles/pubsub.publisher"
  member  = "serviceAccount:${local.batch_agent}"
}

# ---------------------------------------------------------------------------------------------
# The launcher: submit, watch, cancel and delete jobs as the jobs' service account; stage
# files; read the jobs' logs; take notifications.
# ---------------------------------------------------------------------------------------------

resource "google_service_account" "launcher" {
  count = var.launcher_service_account_email == null ? 1 : 0

  project      = var.project
  account_id   = "${var.name_prefix}-launcher"
  display_name = "ferry google-batch launcher"
  description  = "ferry's google-batch launcher: submits Batch jobs and stages their files."

  depends_on = [google_project_service.enabled]
}

resource "google_project_iam_member" "launcher" {
  for_each = local.launcher_project_roles

  project = var.project
  role    = each.value
  member  = "serviceAccount:${local.launcher_email}"
}

# On the jobs' service account only, not the project: the launcher can start jobs as that
# account and no other.
resource "google_service_account_iam_member" "launcher_acts_as_jobs" {
  service_account_id = google_service_account.jobs.name
  role               = "roles/iam.serviceAccountUser"
  member             = "serviceAccount:${local.launcher_email}"
}

resource "google_storage_bucket_iam_member" "launcher_staging" {
  bucket = google_storage_bucket.staging.name
  role   = "roles/storage.objectAdmin"
  member = "serviceAccount:${local.launcher_email}"
}

resource "google_pubsub_subscription_iam_member" "launcher_subscribe" {
  project      = var.project
  subscription = google_pubsub_subscription.launcher.name
  role         = "roles/pubsub.subscriber"
  member       = "serviceAccount:${local.launcher_email}"
}

# "projects/-/" lets IAM find the account from its email, so an existing one from another
# project works too.
resource "google_service_account_iam_member" "launcher_workload_identity" {
  count = var.launcher_workload_identity == null ? 0 : 1

  service_account_id = "projects/-/serviceAccounts/${local.launcher_email}"
  role               = "roles/iam.workloadIdentityUser"
  member             = "serviceAccount:${var.project}.svc.id.goog[${var.launcher_workload_identity}]"
}
