"""The WeCom server API client: tokens shared through Postgres, errcodes classified, calls
retried, rate limited and recorded."""
