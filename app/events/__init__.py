"""WeCom events: what a decrypted callback is (family/type), and when two are the same."""
