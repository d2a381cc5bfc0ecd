#!/usr/bin/env bash
# Copy the pinned front-end assets (package.json / package-lock.json) from npm into static/vendor/.
# Run after changing a version; commit what lands in static/vendor/. Nothing is fetched at run time.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ -f package-lock.json ]; then
    npm ci --no-audit --no-fund --ignore-scripts
else
    npm install --no-audit --no-fund --ignore-scripts
fi

dest=static/vendor
rm -rf "$dest"
mkdir -p "$dest/htmx" "$dest/pico" "$dest/uplot"

copy() {  # package, file inside it, destination folder
    local version
    version=$(node -p "require('./node_modules/$1/package.json').version")
    cp "node_modules/$1/$2" "$dest/$3/"
    cp "node_modules/$1/LICENSE"* "$dest/$3/" 2>/dev/null || cp "node_modules/$1/license"* "$dest/$3/" 2>/dev/null || true
    echo "$1@$version -> $dest/$3/$(basename "$2")"
    grep -qxF "$1@$version" "$dest/VERSIONS" 2>/dev/null || echo "$1@$version" >> "$dest/VERSIONS"
}

copy htmx.org dist/htmx.min.js htmx
copy @picocss/pico css/pico.min.css pico
# Charts on the lease and provider server pages (static/js/telemetry_charts.js): the script and its stylesheet.
copy uplot dist/uPlot.iife.min.js uplot
copy uplot dist/uPlot.min.css uplot
