# An example deployment on Amazon MSK (Kafka). Copy, fill in your own values, then
#   terraform plan -var-file=kafka.tfvars
region             = "eu-west-1"
name               = "ferry"
vpc_id             = "vpc-0123456789abcdef0"
private_subnet_ids = ["subnet-0aaaaaaaaaaaaaaa1", "subnet-0aaaaaaaaaaaaaaa2", "subnet-0aaaaaaaaaaaaaaa3"]
public_subnet_ids  = ["subnet-0bbbbbbbbbbbbbbb1", "subnet-0bbbbbbbbbbbbbbb2"]

image           = "123456789012.dkr.ecr.eu-west-1.amazonaws.com/ferry:1.0.0"
api_domain_name = "ferry.example.com"
certificate_arn = "arn:aws:acm:eu-west-1:123456789012:certificate/00000000-0000-0000-0000-000000000000"
# Your offices and CI; the api also asks every request for a bearer token.
api_ingress_cidrs      = ["203.0.113.0/24"]
alb_access_logs_bucket = "example-alb-access-logs"

bus = "kafka"
