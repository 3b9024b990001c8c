# Secrets Manager holds every credential; task definitions only name them. Terraform never sees
# the bus key file or the api's tokens: it creates the secrets empty and the operator puts the
# values (README.md, "Secrets"). The database password is generated at apply and written only to
# RDS and its secret (write-only attributes: it is not in the state).

resource "aws_secretsmanager_secret" "bus_keys" {
  # checkov:skip=CKV2_AWS_57:The bus key file is rotated by adding a key (ferry key add), which every service must accept before one signs with it; a Lambda rotation would break the deployment's signatures.
  name        = "${var.name}/bus-keys"
  description = "ferry bus key file (ferry key create): signs and checks every event on the bus"
  kms_key_id  = aws_kms_key.ferry.arn
}

resource "aws_secretsmanager_secret" "api_tokens" {
  # checkov:skip=CKV2_AWS_57:The tokens file holds only hashes of the api's tokens and is re-read on change; tokens are revoked and issued with ferry token create, not by rotation.
  name        = "${var.name}/api-tokens"
  description = "ferry api tokens file (YAML of token names, SHA-256 hashes and scopes)"
  kms_key_id  = aws_kms_key.ferry.arn
}

resource "aws_secretsmanager_secret" "db" {
  # checkov:skip=CKV2_AWS_57:The schedulers read the password at start; raise db_password_version and restart them to change it (a Lambda rotation would cut them off until restarted).
  name        = "${var.name}/db"
  description = "ferry scheduler database credentials"
  kms_key_id  = aws_kms_key.ferry.arn
}

ephemeral "aws_secretsmanager_random_password" "db" {
  password_length     = 32
  exclude_punctuation = true
}

resource "aws_secretsmanager_secret_version" "db" {
  secret_id                = aws_secretsmanager_secret.db.id
  secret_string_wo         = jsonencode({ username = local.db_user, password = ephemeral.aws_secretsmanager_random_password.db.random_password })
  secret_string_wo_version = var.db_password_version
}

# The broker URL carries the Amazon MQ user's password (RabbitMQ only; MSK is reached without
# credentials). Amazon MQ takes the password only as a plain attribute, so it is in the state.
resource "aws_secretsmanager_secret" "bus_url" {
  # checkov:skip=CKV2_AWS_57:Amazon MQ cannot change a user's password from a rotation function ferry's services would follow; the services read the URL at start.
  count       = var.bus == "rabbitmq" ? 1 : 0
  name        = "${var.name}/bus-url"
  description = "ferry bus URL (amqps, with the broker user's password)"
  kms_key_id  = aws_kms_key.ferry.arn
}

resource "aws_secretsmanager_secret_version" "bus_url" {
  count                    = var.bus == "rabbitmq" ? 1 : 0
  secret_id                = aws_secretsmanager_secret.bus_url[0].id
  secret_string_wo         = local.amqp_url
  secret_string_wo_version = 1
}

locals {
  # The secret every service reads, and which others each one needs.
  service_secrets = {
    planner   = [aws_secretsmanager_secret.bus_keys.arn]
    scheduler = [aws_secretsmanager_secret.bus_keys.arn, aws_secretsmanager_secret.db.arn]
    launcher  = [aws_secretsmanager_secret.bus_keys.arn]
    logs      = [aws_secretsmanager_secret.bus_keys.arn, aws_secretsmanager_secret.api_tokens.arn]
  }
  bus_url_secret = var.bus == "rabbitmq" ? [aws_secretsmanager_secret.bus_url[0].arn] : []
}
