# The AWS Batch resources ferry's aws-batch launcher uses. The launcher itself runs like the local
# one (`ferry service launcher --backend aws-batch`) once it exists, with the module's role as its
# task role.
module "batch" {
  source = "./modules/batch"
  count  = var.batch_enabled ? 1 : 0

  name               = var.name
  vpc_id             = var.vpc_id
  subnet_ids         = var.private_subnet_ids
  kms_key_arn        = aws_kms_key.ferry.arn
  max_vcpus          = var.batch_max_vcpus
  use_spot           = var.batch_use_spot
  service_role_arn   = var.batch_service_role_arn
  log_retention_days = var.log_retention_days
}
