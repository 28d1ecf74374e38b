"""The Ray Serve application every rendered RayService imports (thin over ray.serve.llm)."""
