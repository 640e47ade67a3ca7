{
  "targets": [
    {
      "target_name": "ksm",
      "dependencies": [
        "<!(node -p \"require('node-addon-api').targets\"):node_addon_api_except_all"
      ],
      "defines": ["NAPI_VERSION=8"],
      "conditions": [
        ["OS=='linux'", {
          "sources": [
            "native/addon.cc",
            "native/errors.cc",
            "native/mapping.cc",
            "native/pagemap.cc"
          ],
          "cflags_cc": ["-std=c++17", "-Wall", "-Wextra", "-Werror", "-fvisibility=hidden"]
        }, {
          "sources": ["native/unsupported.cc"]
        }]
      ]
    }
  ]
}
