// Renders this server's OpenAPI document with Redoc (compiled into the
// binary: api/web/redoc/). A file, not an inline script: the page's CSP
// allows scripts from its own origin only.
Redoc.init('openapi.json', {
  expandResponses: '200,201',
  jsonSampleExpandLevel: 3,
  hideDownloadButton: false,
}, document.getElementById('redoc'));
