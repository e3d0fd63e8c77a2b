"""Operations an internal system asks for over the API: tag a customer, write to a 微信客服
customer, message members. Each checks what can be checked now (the customer, the app, the
tags, WeCom's limits), then becomes an action in the caller's transaction, so the API can
answer 202 with the action's id and the action runner does the rest, retried and recorded
like any other."""
