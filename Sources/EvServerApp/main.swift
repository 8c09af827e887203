// SKELETON: the evserver demo app.
print("evserver: not yet")
