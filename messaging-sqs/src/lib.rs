//! AWS SQS/SNS adapter for `messaging` over the AWS SDK. Not implemented yet: see issue 6.
