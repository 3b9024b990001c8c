output "api_url" {
  description = "Where clients reach the api (FERRY_API); point api_domain_name at api_load_balancer_dns_name."
  value       = "https://${var.api_domain_name}"
}

output "api_load_balancer_dns_name" {
  description = "DNS name of the api's load balancer: the target of api_domain_name's CNAME or alias record."
  value       = aws_lb.api.dns_name
}

output "api_load_balancer_zone_id" {
  description = "Hosted zone of the load balancer, for a Route 53 alias record."
  value       = aws_lb.api.zone_id
}

output "cluster_name" {
  description = "The ECS cluster running ferry's services."
  value       = aws_ecs_cluster.ferry.name
}

output "service_names" {
  description = "The ECS services: planner, scheduler, launcher, logs (log collector and api)."
  value       = { for k, s in aws_ecs_service.ferry : k => s.name }
}

output "bus_key_file_secret_arn" {
  description = "Secret to put the bus key file into (ferry key create; see README.md)."
  value       = aws_secretsmanager_secret.bus_keys.arn
}

output "api_tokens_secret_arn" {
  description = "Secret to put the api's tokens file into (ferry token create; see README.md)."
  value       = aws_secretsmanager_secret.api_tokens.arn
}

output "db_secret_arn" {
  description = "Secret holding the scheduler database's user name and password."
  value       = aws_secretsmanager_secret.db.arn
}

output "db_endpoint" {
  description = "The scheduler database's address and port."
  value       = "${aws_db_instance.scheduler.address}:${aws_db_instance.scheduler.port}"
}

output "bus_url_secret_arn" {
  description = "Secret holding the amqps bus URL (RabbitMQ); null on Kafka."
  value       = var.bus == "rabbitmq" ? aws_secretsmanager_secret.bus_url[0].arn : null
}

output "kafka_bus_url" {
  description = "The bus URL on MSK (plaintext inside the VPC); null on RabbitMQ."
  value       = local.kafka_url
}

output "kms_key_arn" {
  description = "The key encrypting secrets, logs, the database, the broker and the file system."
  value       = aws_kms_key.ferry.arn
}

output "log_groups" {
  description = "CloudWatch log group of each service."
  value       = { for k, g in aws_cloudwatch_log_group.service : k => g.name }
}

output "batch" {
  description = "What the aws-batch launcher is configured with (null when batch_enabled is false)."
  value = var.batch_enabled ? {
    compute_environment_arn = module.batch[0].compute_environment_arn
    job_queue_arn           = module.batch[0].job_queue_arn
    job_definition_prefix   = module.batch[0].job_definition_prefix
    staging_bucket          = module.batch[0].staging_bucket
    events_queue_url        = module.batch[0].events_queue_url
    log_group               = module.batch[0].log_group
    job_execution_role_arn  = module.batch[0].job_execution_role_arn
    job_role_arn            = module.batch[0].job_role_arn
    security_group_id       = module.batch[0].security_group_id
    launcher_policy_arn     = module.batch[0].launcher_policy_arn
    launcher_role_arn       = module.batch[0].launcher_role_arn
  } : null
}
