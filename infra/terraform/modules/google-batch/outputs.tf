output "staging_bucket_url" {
  description = "The staging bucket, gs://BUCKET (the launcher's --google-batch-staging)."
  value       = google_storage_bucket.staging.url
}

output "jobs_service_account_email" {
  description = "Service account the jobs' VMs run as (the launcher's --google-batch-service-account)."
  value       = google_service_account.jobs.email
}

output "launcher_service_account_email" {
  description = "Service account the launcher runs as, created here or the one given."
  value       = local.launcher_email
}

output "topic_id" {
  description = "Topic for the jobs' state notifications, projects/PROJECT/topics/NAME (the launcher's --google-batch-topic)."
  value       = google_pubsub_topic.job_state.id
}

output "subscription_id" {
  description = "The launcher's pull subscription to the topic, projects/PROJECT/subscriptions/NAME (its --google-batch-subscription)."
  value       = google_pubsub_subscription.launcher.id
}

output "launcher_flags" {
  description = "The google-batch launcher's flags for this deployment, flag => value."
  value = {
    "--google-project"               = var.project
    "--google-region"                = var.region
    "--google-batch-staging"         = google_storage_bucket.staging.url
    "--google-batch-service-account" = google_service_account.jobs.email
    "--google-batch-topic"           = google_pubsub_topic.job_state.id
    "--google-batch-subscription"    = google_pubsub_subscription.launcher.id
  }
}
