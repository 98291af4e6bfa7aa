#!/bin/sh
# Five calls with curl, one sign-in: `indigo-auth token` reuses the cached token.
set -eu
api="${INDIGO_API_URL:-https://api.indigobrowser.com}"

for page in 1 2 3 4 5; do
    token=$(indigo-auth token) || {
        status=$?
        case $status in
            3) echo "wrong email or password" >&2 ;;
            4) echo "rate limited: try again in a minute" >&2 ;;
            5) echo "the Indigo API is unreachable" >&2 ;;
        esac
        exit "$status"
    }
    curl --fail --silent --show-error -H "Authorization: Bearer $token" "$api/workspace/folders"
    echo " <- call $page"
done
