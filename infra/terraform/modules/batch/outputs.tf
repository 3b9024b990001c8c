output "compute_environment_arn" {
  description = "The Fargate compute environment (the launcher's `compute_environment` setting)."
  value       = aws_batch_compute_environment.fargate.arn
}

output "job_queue_arn" {
  description = "The job queue jobs are submitted to."
  value       = aws_batch_job_queue.ferry.arn
}

output "job_definition_prefix" {
  description = "Name prefix the launcher's job definitions must use (its policy allows only these)."
  value       = local.job_definition_prefix
}

output "staging_bucket" {
  description = "Bucket where attempts' input files and outputs are staged."
  value       = aws_s3_bucket.staging.bucket
}

output "events_queue_url" {
  description = "SQS queue receiving Batch Job State Change events of the job queue."
  value       = aws_sqs_queue.events.url
}

output "log_group" {
  description = "Log group the jobs write to (awslogs-group of the job definitions)."
  value       = aws_cloudwatch_log_group.jobs.name
}

output "job_execution_role_arn" {
  description = "Execution role of the jobs (image pull, logs, secret references)."
  value       = aws_iam_role.job_execution.arn
}

output "job_role_arn" {
  description = "Role the jobs' containers run with (empty: attach what tasks need)."
  value       = aws_iam_role.job.arn
}

output "security_group_id" {
  description = "Security group of the jobs."
  value       = aws_security_group.jobs.id
}

output "launcher_policy_arn" {
  description = "Managed policy with every permission the aws-batch launcher needs."
  value       = aws_iam_policy.launcher.arn
}

output "launcher_role_arn" {
  description = "ECS task role for the aws-batch launcher, with launcher_policy_arn attached."
  value       = aws_iam_role.launcher.arn
}
